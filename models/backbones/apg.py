"""APG: adaptive parameter generation with low-rank, over-parameterised
layers."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.mlp import MLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class OverparamFactors(tf.keras.layers.Layer):
  """Training-time factors U = U1 U2 and V = V1 V2 with inner width p.

  APG's over-parameterisation (Yan et al., arXiv 2203.16218, Sec. "Over
  Parameterization"): U1 `[in, p]`, U2 `[p, k]`, V1 `[k, p]`, V2 `[p, out]`.
  The wider inner dimension p only changes the optimisation dynamics; the
  products are what the adaptive layer uses, so they fold into single U and V
  matrices for serving (`AdaptiveDense.merge_overparameterization`). Its
  weights are named `u1`, `u2`, `v1`, `v2`.

  Args:
    rank: k, the width of the generated core S(z), at least 1.
    units: output width of the adaptive layer, at least 1.
    inner_dim: p, the inner width of the factor products, at least 1.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self, rank: int, units: int, inner_dim: int, **kwargs):
    super().__init__(**kwargs)
    self.rank = base.check_positive("rank", rank)
    self.units = base.check_positive("units", units)
    self.inner_dim = base.check_positive("inner_dim", inner_dim)

  def build(self, input_shape):
    dim = int(input_shape[-1])
    p, k = self.inner_dim, self.rank
    self.u1 = self.add_weight("u1", [dim, p], initializer="glorot_uniform")
    self.u2 = self.add_weight("u2", [p, k], initializer="glorot_uniform")
    self.v1 = self.add_weight("v1", [k, p], initializer="glorot_uniform")
    self.v2 = self.add_weight("v2", [p, self.units],
                              initializer="glorot_uniform")
    super().build(input_shape)

  def products(self):
    """Returns (U `[in, rank]`, V `[rank, units]`)."""
    return tf.matmul(self.u1, self.u2), tf.matmul(self.v1, self.v2)

  def get_config(self):
    config = super().get_config()
    config.update(rank=self.rank, units=self.units, inner_dim=self.inner_dim)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class AdaptiveDense(tf.keras.layers.Layer):
  """h = act(((x U) S(z)) V + b) with S(z) = reshape(MLP(z), [k, k]).

  APG's adaptive layer (Yan et al., arXiv 2203.16218, Sec. "Low-Rank
  Parameterization" and "Decomposed Feed-forwarding"). U `[in, k]` and V
  `[k, units]` are shared across examples; only the k x k core S(z) is
  generated per example, which keeps generation cheap. With `overparam_dim`
  > 0, U and V are products of wider `OverparamFactors` until
  `merge_overparameterization` folds them into weights named `u` and `v`.

  Args:
    units: output width, at least 1.
    rank: k, the side of the generated core S(z), at least 1.
    overparam_dim: inner width p of the U / V factors; 0 trains U and V
      directly.
    generator_units: hidden layer sizes of the MLP generating S(z) from z.
    activation: activation of the output (a Keras name).
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self,
               units: int,
               rank: int = 8,
               overparam_dim: int = 0,
               generator_units: Sequence[int] = (32,),
               activation: str = "relu",
               **kwargs):
    super().__init__(**kwargs)
    self.units = base.check_positive("units", units)
    self.rank = base.check_positive("rank", rank)
    self.overparam_dim = base.check_non_negative("overparam_dim", overparam_dim)
    self.generator_units = base.check_units("generator_units", generator_units)
    self.activation = activation
    self._activation = tf.keras.activations.get(activation)
    self._generator = MLP(self.generator_units + [self.rank * self.rank],
                          output_activation=None, name="generator")
    self._factors = (OverparamFactors(self.rank, self.units, self.overparam_dim,
                                      name="factors")
                     if self.overparam_dim else None)

  def build(self, input_shape):
    dim = int(input_shape[0][-1])
    self.bias = self.add_weight("bias", [self.units], initializer="zeros")
    if self._factors is None:
      self._add_merged_weights(dim)
    else:
      self._factors.build(tf.TensorShape([None, dim]))
    super().build(input_shape)

  def _add_merged_weights(self, dim, u_init="glorot_uniform",
                          v_init="glorot_uniform"):
    self.u = self.add_weight("u", [dim, self.rank], initializer=u_init)
    self.v = self.add_weight("v", [self.rank, self.units], initializer=v_init)

  def call(self, inputs):
    """Applies the per-example weights U S(z) V.

    Args:
      inputs: tuple (x `[batch_size, in]`, z `[batch_size, C]`).

    Returns:
      `[batch_size, units]`.
    """
    x, condition = inputs
    if self._factors is None:
      u, v = self.u, self.v
    else:
      u, v = self._factors.products()
    core = tf.reshape(self._generator(condition), [-1, self.rank, self.rank])
    h = tf.einsum("bk,bkj->bj", tf.matmul(x, u), core)
    return self._activation(tf.matmul(h, v) + self.bias)

  def merge_overparameterization(self):
    """Replaces the factors by single U = U1 U2 and V = V1 V2 (same outputs).

    Afterwards the layer holds (and a SavedModel exports) only `u` and `v`,
    named beside the layer's other weights, and its config says
    `overparam_dim=0`, so `from_config` + `set_weights` can rebuild it. A
    no-op when not over-parameterised or not yet built.
    """
    if self._factors is None or not self.built:
      return
    u, v = self._factors.products()
    # Outside `__call__` no name scope is open: reuse the one `bias` got in
    # `build`, so the merged weights read `.../adaptive_0/u:0`, not `u:0`.
    scope = self.bias.name.rpartition("/")[0]
    with tf.name_scope(scope + "/" if scope else ""):
      self._add_merged_weights(int(u.shape[0]),
                               tf.constant_initializer(u.numpy()),
                               tf.constant_initializer(v.numpy()))
    # Drop the factors from the layer's weights and from its checkpoint /
    # SavedModel dependencies.
    del self._factors
    self._delete_tracking("_factors")
    self._factors = None
    self.overparam_dim = 0

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, rank=self.rank,
                  overparam_dim=self.overparam_dim,
                  generator_units=list(self.generator_units),
                  activation=self.activation)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class APG(base.Backbone):
  """APG: Adaptive Parameter Generation Network (Yan et al., NeurIPS
  2022, arXiv 2203.16218), Sec. "Adaptive Parameter Generation".

  A stack of `AdaptiveDense` layers whose per-example weights U S(z) V are
  generated from the condition z (low-rank k = `rank`), followed by
  a plain dense layer to `output_dim`. Over-parameterisation trains
  U and V as products of wider factors; call `merge_overparameterization()`
  before export to fold them (outputs are unchanged).

  Args:
    num_domains: number of domains; kept for the common backbone interface.
    output_dim: width of the returned representation.
    units: sizes of the adaptive layers; at least one (they are what reads
      the condition).
    rank: k, the side of each generated core S(z), at least 1.
    overparam_dim: inner width p of the training-time U / V factors; 0
      disables over-parameterisation.
    generator_units: hidden layer sizes of each layer's S(z) generator.
    dropout: dropout rate in [0, 1) after each adaptive layer.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  reads_condition = True
  reads_domain = False

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               units: Sequence[int] = (64, 32),
               rank: int = 8,
               overparam_dim: int = 32,
               generator_units: Sequence[int] = (32,),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.set_options(units=units, rank=rank, overparam_dim=overparam_dim,
                     generator_units=generator_units, dropout=dropout,
                     non_empty=("units",))
    self._adaptive = [
        AdaptiveDense(u, self.rank, self.overparam_dim, self.generator_units,
                      name=f"adaptive_{i}") for i, u in enumerate(self.units)
    ]
    self._dropout = tf.keras.layers.Dropout(self.dropout)
    self._output = MLP([self.output_dim], name="output")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Adaptive layers conditioned on z, then the output layer.

    Args:
      inputs: dict with "features" `[batch_size, F]` and "condition"
        `[batch_size, C]`; "domain" is ignored if present.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, _ = self.unpack(inputs)
    x = features
    for layer in self._adaptive:
      x = self._dropout(layer((x, condition)), training=training)
    return self._output(x, training=training)

  def merge_overparameterization(self):
    """Folds each layer's U1 U2 / V1 V2 into single U / V (overparam_dim=0).

    Call once training is done (after the layer is built), before export; if
    the model was built under a distribution strategy, call it inside that
    strategy's scope. Keras models cache their traced train/predict
    functions, which still read the factors: re-`compile` (or
    `make_*_function(force=True)`) before `fit`/`predict` again.
    `tf.saved_model.save` traces afresh.
    """
    for layer in self._adaptive:
      layer.merge_overparameterization()
    if all(layer.overparam_dim == 0 for layer in self._adaptive):
      self.overparam_dim = 0
