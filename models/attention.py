"""Pooling a behaviour sequence into one interest vector: DIN target attention, or a mean.

A sequence arrives padded, `[batch, max_length, d]` with a `[batch, max_length]` mask
(True for a real position). Both layers give padded positions exactly zero weight, so
the padding length of a batch never changes a prediction, and an empty history pools
to zeros.
"""
from typing import Dict, Sequence

import tensorflow as tf

from hmdn.models.mlp import MLP

NORMALIZATIONS = ("softmax", "none")


def _masked(inputs: Dict[str, tf.Tensor]):
  keys = tf.convert_to_tensor(inputs["keys"])
  mask = tf.cast(inputs["mask"], keys.dtype)  # [B, L]
  return keys, mask


@tf.keras.utils.register_keras_serializable(package="hmdn")
class TargetAttention(tf.keras.layers.Layer):
  """DIN's local activation unit (Zhou et al., arXiv 1706.06978, Sec. 4.3).

  The weight of behaviour k for candidate q is an MLP of [q, k, q - k, q * k] (DIN's
  released code; the paper draws an outer product), and the interest is the weighted
  sum of the behaviours. The paper leaves the weights unnormalised ("to reserve the
  intensity of user interests", `normalization="none"`); its code and most libraries
  apply a softmax over the sequence (`"softmax"`). Masked positions get weight 0 either
  way (-1e9 before the softmax, then zeroed).

  Args:
    units: hidden layer sizes of the activation unit's MLP (DIN: 80, 40).
    activation: activation of those layers (DIN: sigmoid, or its Dice/PReLU).
    normalization: "softmax" or "none".
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  def __init__(self, units: Sequence[int] = (80, 40), activation: str = "sigmoid",
               normalization: str = "softmax", **kwargs):
    super().__init__(**kwargs)
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"TargetAttention `normalization` must be one of "
                       f"{NORMALIZATIONS}, got {normalization!r}.")
    self.units = [int(u) for u in units]
    self.activation = activation
    self.normalization = normalization
    self._unit = MLP(self.units + [1], activation=activation, output_activation=None,
                     name="activation_unit")

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False,
           return_weights: bool = False):
    """inputs: {"query": [B, d], "keys": [B, L, d], "mask": [B, L] bool}.

    Returns the interest `[B, d]` (and the weights `[B, L]` with `return_weights`).
    """
    keys, mask = _masked(inputs)
    query = tf.convert_to_tensor(inputs["query"], keys.dtype)
    q = tf.broadcast_to(query[:, None, :], tf.shape(keys))
    scores = tf.squeeze(self._unit(tf.concat([q, keys, q - keys, q * keys], -1),
                                   training=training), -1)  # [B, L]
    if self.normalization == "softmax":
      # In float32 with a finite fill: -1e9 is -inf in float16, and a softmax of an
      # all-masked row of -inf is NaN (mixed precision, an empty history).
      filled = tf.where(mask > 0, tf.cast(scores, tf.float32), -1e9)
      scores = tf.cast(tf.nn.softmax(filled, axis=-1), keys.dtype)
    weights = scores * mask  # exactly 0 at padding (and for an empty history)
    interest = tf.einsum("bl,bld->bd", weights, keys)
    return (interest, weights) if return_weights else interest

  def get_config(self):
    config = super().get_config()
    config.update(units=list(self.units), activation=self.activation,
                  normalization=self.normalization)
    return config


@tf.keras.utils.register_keras_serializable(package="hmdn")
class MaskedMeanPooling(tf.keras.layers.Layer):
  """The mean of a sequence's real positions (zeros for an empty one): the baseline
  DIN is measured against, blind to the candidate."""

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """inputs: {"keys": [B, L, d], "mask": [B, L]} (a "query" is ignored)."""
    keys, mask = _masked(inputs)
    total = tf.einsum("bl,bld->bd", mask, keys)
    return total / tf.maximum(tf.reduce_sum(mask, -1, keepdims=True), 1.0)
