"""Shared-bottom DNN: the single-distribution baseline backbone."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.mlp import MLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class DNN(base.Backbone):
  """Shared-bottom MLP over the concatenated field embeddings.

  The plain deep tower of CTR models (Wide & Deep, Cheng et al., arXiv
  1606.07792, Sec. "The Deep Component"): every example, whatever its
  distribution, goes through the same MLP. It ignores the condition and the
  domain, which makes it the reference point for how much the conditioned
  backbones gain.

  Args:
    num_domains: number of domains; kept for the common backbone interface.
    output_dim: width of the returned representation (the last layer).
    units: hidden layer sizes before the `output_dim` layer; may be empty.
    dropout: dropout rate in [0, 1) between layers.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  reads_condition = False
  reads_domain = False

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               units: Sequence[int] = (128, 64),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.set_options(units=units, dropout=dropout)
    self._mlp = MLP(self.units + [self.output_dim], dropout=self.dropout,
                    name="mlp")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Maps the features; "condition" and "domain" are ignored if present.

    Args:
      inputs: dict with "features" `[batch_size, num_features * dim]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, _, _ = self.unpack(inputs)
    return self._mlp(features, training=training)
