"""Expert banks and softmax gates shared by the Mixture-of-Experts backbones.

MoE, MMoE, PLE and HiNet all mix a bank of MLP experts with a softmax gate;
they differ only in how many banks/gates there are and what the gates read.
"""
from typing import Sequence

import tensorflow as tf

from models.mlp import MLP


class ExpertBank(tf.keras.layers.Layer):
  """`num_experts` independent MLP experts applied to the same input."""

  def __init__(self,
               num_experts: int,
               units: Sequence[int],
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    self.num_experts = int(num_experts)
    self.units = [int(u) for u in units]
    self.dropout = float(dropout)
    self._experts = [
        MLP(self.units, dropout=self.dropout, name=f"expert_{i}")
        for i in range(self.num_experts)
    ]

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """[B, input_dim] -> [B, num_experts, units[-1]]."""
    return tf.stack([e(inputs, training=training) for e in self._experts],
                    axis=1)

  def get_config(self):
    config = super().get_config()
    config.update(num_experts=self.num_experts, units=self.units,
                  dropout=self.dropout)
    return config


class SoftmaxGate(tf.keras.layers.Layer):
  """Softmax weights over `num_experts` from MLP(hidden_units) + linear."""

  def __init__(self,
               num_experts: int,
               hidden_units: Sequence[int] = (),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    self.num_experts = int(num_experts)
    self.hidden_units = [int(u) for u in hidden_units]
    self.dropout = float(dropout)
    self._mlp = MLP(self.hidden_units + [self.num_experts],
                    output_activation=None, dropout=self.dropout, name="mlp")

  def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
    """[B, gate_input_dim] -> [B, num_experts], rows sum to 1."""
    return tf.nn.softmax(self._mlp(inputs, training=training), axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(num_experts=self.num_experts, hidden_units=self.hidden_units,
                  dropout=self.dropout)
    return config


def mix(experts: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Gate-weighted sum of experts: [B, E, H] x [B, E] -> [B, H]."""
  return tf.einsum("beh,be->bh", experts, weights)
