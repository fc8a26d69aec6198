"""STAR: star-topology fully-connected network for multi-domain CTR."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.mlp import MLP, gathered_matmul, grouped_matmul


@tf.keras.utils.register_keras_serializable(package="hmdn")
class DomainLayerNorm(tf.keras.layers.Layer):
  """LayerNorm with scale shared ⊙ domain and shift shared + domain.

  Stand-in for STAR's Partitioned Normalization (Sheng et al., arXiv
  2101.11427, Sec. "Partitioned Normalization"): PN keeps per-domain batch
  statistics, which would make a prediction depend on its batch. Normalising
  each example over its own features keeps PN's per-domain affine part only:
  `(x - mean(x)) / std(x) * (gamma * gamma_d) + (beta + beta_d)`.

  Args:
    num_domains: number of domains, i.e. of per-domain scale/shift rows.
    epsilon: added to the variance before the square root, > 0.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self, num_domains: int, epsilon: float = 1e-3, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = base.check_positive("num_domains", num_domains)
    if isinstance(epsilon, bool) or not float(epsilon) > 0.0:
      raise ValueError(f"`epsilon` must be a positive number, got {epsilon!r}.")
    self.epsilon = float(epsilon)

  def build(self, input_shape):
    dim = int(input_shape[0][-1])
    self.gamma = self.add_weight("gamma", [dim], initializer="ones")
    self.beta = self.add_weight("beta", [dim], initializer="zeros")
    self.domain_gamma = self.add_weight("domain_gamma", [self.num_domains, dim],
                                        initializer="ones")
    self.domain_beta = self.add_weight("domain_beta", [self.num_domains, dim],
                                       initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    """Normalises each example and applies its domain's affine map.

    Args:
      inputs: tuple (x `[batch_size, F]`, integer domain `[batch_size]`).

    Returns:
      `[batch_size, F]`.
    """
    x, domain = inputs
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    normed = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
    scale = self.gamma * tf.gather(self.domain_gamma, domain)
    shift = self.beta + tf.gather(self.domain_beta, domain)
    return normed * scale + shift

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, epsilon=self.epsilon)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class StarDense(tf.keras.layers.Layer):
  """Fully-connected layer with weight W ⊙ W_d and bias b + b_d for domain d.

  STAR's star-topology FC layer (Sheng et al., arXiv 2101.11427, Sec. "Star
  Topology Fully-Connected Network"). With many domains each example gathers
  its own domain's weight (`[B, in, units]`, a cost independent of D); with few,
  every domain's branch is computed (`[B, D, units]`) and the own one kept
  (`base.runs_own_branch_only`). The domain factors start at
  ones / zeros, so all domains equal the shared layer at initialisation.

  Args:
    num_domains: number of domains, i.e. of per-domain weight factors.
    units: output width, at least 1.
    activation: activation applied to the output (a Keras name).
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  # Own weight only from this many domains (base.runs_own_branch_only): gathering a
  # [in, units] weight per example costs more than a few domains' dense einsum.
  own_branch_from_domains = 32

  def __init__(self, num_domains: int, units: int, activation: str = "relu",
               **kwargs):
    super().__init__(**kwargs)
    self.num_domains = base.check_positive("num_domains", num_domains)
    self.units = base.check_positive("units", units)
    self.activation = activation
    self._activation = tf.keras.activations.get(activation)

  def build(self, input_shape):
    dim = int(input_shape[0][-1])
    self.kernel = self.add_weight("kernel", [dim, self.units],
                                  initializer="glorot_uniform")
    self.bias = self.add_weight("bias", [self.units], initializer="zeros")
    # Domain factors start at the identity of ⊙ / +: all domains equal the
    # shared network at initialisation.
    self.domain_kernel = self.add_weight(
        "domain_kernel", [self.num_domains, dim, self.units],
        initializer="ones")
    self.domain_bias = self.add_weight(
        "domain_bias", [self.num_domains, self.units], initializer="zeros")
    super().build(input_shape)

  def call(self, inputs):
    """Applies each example's domain-specific weights.

    Args:
      inputs: tuple (x `[batch_size, in]`, integer domain `[batch_size]`).

    Returns:
      `[batch_size, units]`.
    """
    x, domain = inputs
    if base.runs_own_branch_only(self.num_domains, self.own_branch_from_domains):
      kernels = self.kernel[tf.newaxis] * self.domain_kernel  # [D, in, units]
      out = gathered_matmul(x[:, None, :], kernels[:, None], domain)[:, 0]  # [B, units]
    else:
      kernels = self.kernel[tf.newaxis] * self.domain_kernel  # [D, in, units]
      per_domain = grouped_matmul(x, kernels)
      out = base.select_by_domain(per_domain, domain)
    out += self.bias + tf.gather(self.domain_bias, domain)
    return self._activation(out)

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, units=self.units,
                  activation=self.activation)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class STAR(base.Backbone):
  """STAR (Sheng et al., CIKM 2021, arXiv 2101.11427), Sec. "Star
  Topology Fully-Connected Network" and "Auxiliary Network".

  Star-topology FC layers: domain d's layer uses W ⊙ W_d and b + b_d, so the
  shared centre and per-domain factors are trained together. An auxiliary
  network over z outputs a vector added to the final hidden state, so through
  the shared linear logit head it adds a domain-aware logit.
  Deviation: Partitioned Normalization uses batch statistics; here
  it is a per-example LayerNorm with PN's per-domain scale/shift (no batch
  statistics at training or inference), see `DomainLayerNorm`.

  Args:
    num_domains: number of domains, i.e. of per-domain factors per layer.
    output_dim: width of the returned representation (the last star layer).
    units: hidden star-layer sizes before `output_dim`; may be empty.
    aux_units: hidden layer sizes of the auxiliary network over z.
    normalize: whether the features first go through `DomainLayerNorm`.
    dropout: dropout rate in [0, 1) between star layers and in the
      auxiliary network.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  reads_condition = True
  reads_domain = True

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               units: Sequence[int] = (64,),
               aux_units: Sequence[int] = (32,),
               normalize: bool = True,
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.set_options(units=units, aux_units=aux_units, normalize=normalize,
                     dropout=dropout)
    self._norm = (DomainLayerNorm(self.num_domains, name="norm")
                  if self.normalize else None)
    self._layers = [
        StarDense(self.num_domains, u, name=f"star_{i}")
        for i, u in enumerate(self.units + [self.output_dim])
    ]
    self._dropout = tf.keras.layers.Dropout(self.dropout)
    self._aux = MLP(self.aux_units + [self.output_dim], output_activation=None,
                    dropout=self.dropout, name="aux")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Star layers on the features plus the auxiliary network's output on z.

    Args:
      inputs: dict with "features" `[batch_size, F]`, "condition"
        `[batch_size, C]` and integer "domain" `[batch_size]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, domain = self.unpack(inputs)
    x = features
    if self._norm is not None:
      x = self._norm((x, domain))
    for i, layer in enumerate(self._layers):
      if i > 0:
        x = self._dropout(x, training=training)
      x = layer((x, domain))
    return x + self._aux(condition, training=training)
