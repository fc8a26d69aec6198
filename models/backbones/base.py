"""The contract every backbone layer follows, and the helpers they share.

A backbone maps `{"features": E [B, F], "condition": z [B, C], "domain": d [B]}`
to a hidden representation `[B, output_dim]`; the model adds the logit head.
Keeping validation and domain selection here means each backbone module only
holds its paper's computation.
"""
from typing import Dict, Sequence, Tuple

import tensorflow as tf

FEATURES = "features"
CONDITION = "condition"
DOMAIN = "domain"

_RANKS = {FEATURES: 2, CONDITION: 2, DOMAIN: 1}


def check_positive(name: str, value: int) -> int:
  """Returns `value` as an int, or raises naming the option when it is < 1."""
  if isinstance(value, bool) or int(value) != value or int(value) < 1:
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
  return int(value)


def check_units(name: str, units: Sequence[int], allow_empty: bool = True):
  """Returns layer sizes as a list of ints; raises naming the option."""
  if isinstance(units, (int, str)):
    raise ValueError(f"`{name}` must be a list of layer sizes, got {units!r}.")
  units = list(units)
  if not units and not allow_empty:
    raise ValueError(f"`{name}` needs at least one layer size, got {units!r}.")
  for u in units:
    if isinstance(u, bool) or int(u) != u or int(u) < 1:
      raise ValueError(
          f"`{name}` sizes must be positive integers, got {units!r}.")
  return [int(u) for u in units]


def check_dropout(value: float) -> float:
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f"`dropout` must be in [0, 1), got {value!r}.")
  return float(value)


def select_by_domain(per_domain: tf.Tensor, domain: tf.Tensor) -> tf.Tensor:
  """Picks each example's own domain slice: [B, D, ...] x [B] -> [B, ...].

  Backbones with per-domain parameters compute every domain's branch and keep
  the example's own one, so an output only depends on its own example.
  """
  return tf.gather(per_domain, domain, axis=1, batch_dims=1)


class Backbone(tf.keras.layers.Layer):
  """Base class: stores `num_domains`/`output_dim` and validates the inputs.

  Subclasses set `reads_condition` / `reads_domain` to declare which inputs
  they use; only those keys are required in `call`.
  """

  reads_condition: bool = True
  reads_domain: bool = False

  def __init__(self, num_domains: int, output_dim: int, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = check_positive("num_domains", num_domains)
    self.output_dim = check_positive("output_dim", output_dim)

  def _required_keys(self) -> Tuple[str, ...]:
    keys = [FEATURES]
    if self.reads_condition:
      keys.append(CONDITION)
    if self.reads_domain:
      keys.append(DOMAIN)
    return tuple(keys)

  def _check_shapes(self, shapes: Dict[str, tf.TensorShape]):
    if not isinstance(shapes, dict):
      raise ValueError(
          f"{type(self).__name__} expects a dict with keys "
          f"{self._required_keys()}, got {type(shapes).__name__}.")
    for key in self._required_keys():
      if key not in shapes:
        raise ValueError(
            f"{type(self).__name__} needs input {key!r}; got keys "
            f"{sorted(shapes)}.")
    for key, rank in _RANKS.items():
      if key not in shapes:
        continue
      shape = tf.TensorShape(shapes[key])
      if shape.rank is not None and shape.rank != rank:
        raise ValueError(
            f"Input {key!r} must have rank {rank}, got shape {shape}.")
      if rank == 2 and key in self._required_keys() and shape.rank == 2 and (
          shape[-1] is None):
        raise ValueError(
            f"Input {key!r} needs a known last dimension, got shape {shape}.")

  def build(self, input_shape):
    self._check_shapes(input_shape)
    super().build(input_shape)

  def unpack(self, inputs: Dict[str, tf.Tensor]):
    """Validates `inputs`; returns (features, condition, domain) as tensors.

    Inputs the backbone does not read come back as None.
    """
    if not isinstance(inputs, dict):
      self._check_shapes(inputs)
    self._check_shapes({k: tf.convert_to_tensor(v).shape
                        for k, v in inputs.items()})
    features = tf.cast(inputs[FEATURES], tf.float32)
    condition = (tf.cast(inputs[CONDITION], tf.float32)
                 if self.reads_condition else None)
    domain = None
    if self.reads_domain:
      domain = tf.convert_to_tensor(inputs[DOMAIN])
      if not domain.dtype.is_integer:
        raise ValueError(
            f"Input {DOMAIN!r} must be an integer index, got {domain.dtype}.")
      domain = tf.cast(domain, tf.int32)
    return features, condition, domain

  def get_config(self):
    config = super().get_config()
    config.update(num_domains=self.num_domains, output_dim=self.output_dim)
    return config
