"""The multilayer perceptron block every model shares."""
from typing import Optional, Sequence

import tensorflow as tf

from hmdn.models.checks import check_dropout, check_positive, check_units


@tf.keras.utils.register_keras_serializable(package="hmdn")
class MLP(tf.keras.layers.Layer):
  """Stack of Dense layers: the deep tower of CTR models.

  The feed-forward network of Wide & Deep (Cheng et al., arXiv 1606.07792,
  Sec. "The Deep Component"), shared by views, experts, towers and gates
  so no model re-writes it. Hidden layers use `activation`, dropout is applied
  between layers (never after the last one), and the last layer uses
  `output_activation`: None makes it linear, for logits and distribution views.

  Args:
    units: sizes of the Dense layers, first to last; at least one.
    activation: activation of every layer but the last (a Keras name).
    output_activation: activation of the last layer; None for linear.
    dropout: dropout rate in [0, 1) between layers; 0 disables it.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self,
               units: Sequence[int],
               activation: str = "relu",
               output_activation: Optional[str] = "relu",
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    self.units = check_units("units", units, allow_empty=False)
    self.dropout = check_dropout(dropout)
    self.activation = activation
    self.output_activation = output_activation
    self._dense = []
    for i, u in enumerate(self.units):
      last = i == len(self.units) - 1
      self._dense.append(tf.keras.layers.Dense(
          u, activation=output_activation if last else activation,
          name=f"dense_{i}"))
    self._dropout = tf.keras.layers.Dropout(self.dropout) if self.dropout else None

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """Applies the stack.

    Args:
      inputs: `[batch_size, input_dim]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, units[-1]]`.
    """
    x = inputs
    for i, layer in enumerate(self._dense):
      x = layer(x)
      if self._dropout is not None and i < len(self._dense) - 1:
        x = self._dropout(x, training=training)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(units=list(self.units), activation=self.activation,
                  output_activation=self.output_activation, dropout=self.dropout)
    return config


def _grouped_glorot(fan_in: int, fan_out: int):
  """Glorot-uniform for a [groups, fan_in, fan_out] kernel: each group's block is
  initialised like a Dense(fan_out) on fan_in inputs (Keras would count the
  groups as a receptive field and shrink the range)."""
  limit = (6.0 / (fan_in + fan_out)) ** 0.5
  return tf.keras.initializers.RandomUniform(-limit, limit)


# Up to this many groups a grouped layer is one 2-D MatMul per group; above, one
# einsum (the graph would grow with the groups). The einsum transposes its kernel
# and batches tiny matmuls: on CPU, [4, 108, 64] kernels, per-group MatMuls took
# batch 1 from 110 to 17 us and a training step's forward and gradient at batch
# 512 from 1.35 to 1.12 ms (docs/speed.md).
PER_GROUP_MATMUL_UP_TO = 32


def grouped_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """Every group's matmul: `[B, in]` or `[B, G, in]` times `[G, in, out]` -> `[B, G, out]`."""
  groups = kernel.shape[0]
  if groups > PER_GROUP_MATMUL_UP_TO:
    return tf.einsum("bi,gio->bgo" if x.shape.rank == 2 else "bgi,gio->bgo", x, kernel)
  inputs = [x] * groups if x.shape.rank == 2 else tf.unstack(x, groups, axis=1)
  return tf.stack([tf.matmul(xg, kg) for xg, kg in zip(inputs, tf.unstack(kernel))], 1)


def gathered_matmul(x: tf.Tensor, kernels: tf.Tensor, select: tf.Tensor) -> tf.Tensor:
  """Each example times its own block's kernels: `x[b, m] @ kernels[select[b], m]`.

  x: `[batch, members, fan_in]`; kernels: `[blocks, members, fan_in, fan_out]`;
  select: integer `[batch]`. Returns `[batch, members, fan_out]`.

  The gradient is written out because TensorFlow's own is slow here: it returns the
  kernels' gradient as `IndexedSlices` of one `[fan_in, fan_out]` block per example,
  which the reshape back to the variable's shape densifies again each step. Summing the
  per-example outer products into their blocks directly gives the same dense gradient.
  """
  select = tf.cast(select, tf.int32)

  @tf.custom_gradient
  def forward(x, kernels):
    own = tf.gather(kernels, select)  # [B, M, in, out]
    y = tf.squeeze(tf.matmul(x[..., None, :], own), -2)

    def gradient(dy):
      dx = tf.squeeze(tf.matmul(dy[..., None, :], own, transpose_b=True), -2)
      outer = x[..., :, None] * dy[..., None, :]  # [B, M, in, out]
      return dx, tf.math.unsorted_segment_sum(outer, select, tf.shape(kernels)[0])

    return y, gradient

  return forward(x, kernels)


@tf.keras.utils.register_keras_serializable(package="hmdn")
class GroupedMLP(tf.keras.layers.Layer):
  """`groups` independent MLPs computed together, one batched MatMul per layer.

  The experts of a Mixture-of-Experts bank, the per-domain gates and towers of
  MMoE/PLE/HiNet are each a list of small MLPs of one shape. Holding group g's
  layer as slice g of a [groups, fan_in, units] kernel keeps a layer one weight for
  all groups (`grouped_matmul`), or one gather of each example's own groups. Group g
  computes exactly `MLP(units)` with its own weights.

  Args:
    groups: number of independent MLPs, at least 1.
    units: sizes of each MLP's layers, first to last; at least one.
    activation: activation of every layer but the last (a Keras name).
    output_activation: activation of the last layer; None for linear.
    dropout: dropout rate in [0, 1) between layers; 0 disables it.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self,
               groups: int,
               units: Sequence[int],
               activation: str = "relu",
               output_activation: Optional[str] = "relu",
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    self.units = check_units("units", units, allow_empty=False)
    self.dropout = check_dropout(dropout)
    self.groups = check_positive("groups", groups)
    self.activation = activation
    self.output_activation = output_activation
    self._dropout = tf.keras.layers.Dropout(self.dropout) if self.dropout else None

  def build(self, input_shape):
    """input_shape: [batch, fan_in] (one input for all groups) or
    [batch, groups, fan_in] (an input per group)."""
    shape = tf.TensorShape(input_shape)
    if shape.rank not in (2, 3):
      raise ValueError(f"GroupedMLP input must be [batch, fan_in] or "
                       f"[batch, groups, fan_in], got {shape}.")
    self._kernels, self._biases = [], []
    fan_in = int(shape[-1])
    for i, u in enumerate(self.units):
      self._kernels.append(self.add_weight(
          f"kernel_{i}", shape=(self.groups, fan_in, u),
          initializer=_grouped_glorot(fan_in, u)))
      self._biases.append(self.add_weight(
          f"bias_{i}", shape=(self.groups, u), initializer="zeros"))
      fan_in = u
    super().build(input_shape)

  def call(self, inputs: tf.Tensor, training: bool = False,
           select: Optional[tf.Tensor] = None, members: int = 1) -> tf.Tensor:
    """Applies every group's MLP, or with `select` only the groups each example uses.

    Args:
      inputs: `[batch_size, fan_in]` (shared) or `[batch_size, groups, fan_in]`; with
        `select`, `[batch_size, fan_in]` or `[batch_size, members, fan_in]`.
      training: whether dropout is active.
      select: optional integer `[batch_size]`: example b runs only groups
        `select[b] * members ... select[b] * members + members - 1` (a domain's
        tower, or its block of experts), gathering their weights per example, so the
        cost does not grow with the number of groups. The result equals the same
        groups' slice of the full computation.
      members: consecutive groups per selected block; divides `groups`.

    Returns:
      `[batch_size, groups, units[-1]]`; with `select`, `[batch_size, members,
      units[-1]]`.
    """
    x = inputs
    if select is None and x.shape.rank == 3 and x.shape[1] != self.groups:
      raise ValueError(f"GroupedMLP with {self.groups} groups got an input of "
                       f"{x.shape[1]} groups ({x.shape}).")
    if select is not None:
      if self.groups % members:
        raise ValueError(f"GroupedMLP: members={members} does not divide "
                         f"groups={self.groups}.")
      blocks = self.groups // members
      select = tf.cast(select, tf.int32)
    last = len(self.units) - 1
    for i, (kernel, bias) in enumerate(zip(self._kernels, self._biases)):
      if select is None:
        x = grouped_matmul(x, kernel) + bias
      else:
        fan_in, fan_out = kernel.shape[1], kernel.shape[2]
        if x.shape.rank == 2:  # one input for every member
          x = tf.tile(x[:, None, :], [1, members, 1])
        own_bias = tf.gather(tf.reshape(bias, [blocks, members, fan_out]), select)
        x = gathered_matmul(x, tf.reshape(kernel, [blocks, members, fan_in, fan_out]),
                            select) + own_bias
      x = tf.keras.activations.get(
          self.output_activation if i == last else self.activation)(x)
      if self._dropout is not None and i < last:
        x = self._dropout(x, training=training)
    return x

  def group_weights(self, group: int):
    """[kernel_0, bias_0, kernel_1, ...] of one group, in `MLP`'s weight order."""
    weights = []
    for kernel, bias in zip(self._kernels, self._biases):
      weights += [kernel[group], bias[group]]
    return weights

  def get_config(self):
    config = super().get_config()
    config.update(groups=self.groups, units=list(self.units),
                  activation=self.activation,
                  output_activation=self.output_activation, dropout=self.dropout)
    return config
