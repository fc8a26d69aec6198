"""Shared-bottom DNN: the single-distribution baseline backbone."""
from typing import Sequence

import tensorflow as tf

from models.backbones import base
from models.mlp import MLP


class DNN(base.Backbone):
  """Shared-bottom MLP over the concatenated field embeddings.

  The plain deep tower of CTR models (Wide & Deep, arXiv 1606.07792, Sec.
  "The Deep Component"): every example, whatever its distribution, goes
  through the same MLP. It ignores the condition and the domain, which makes
  it the reference point for how much the conditioned backbones gain.
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
    self.units = base.check_units("units", units)
    self.dropout = base.check_dropout(dropout)
    self._mlp = MLP(self.units + [self.output_dim], dropout=self.dropout,
                    name="mlp")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """{"features": [B, F]} -> [B, output_dim]; other keys are ignored."""
    features, _, _ = self.unpack(inputs)
    return self._mlp(features, training=training)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, dropout=self.dropout)
    return config
