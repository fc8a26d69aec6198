"""Mixture-of-Experts backbone with one condition-reading gate."""
from typing import Sequence

import tensorflow as tf

from models.backbones import base
from models.backbones import experts
from models.mlp import MLP


class MoE(base.Backbone):
  """One-gate Mixture-of-Experts (the One-gate MoE baseline of Ma et al.,
  KDD 2018, Sec. "Original Mixture-of-Experts").

  Shared MLP experts read the features; a single softmax gate reading the
  condition z weighs them, and a tower maps the mixture to `output_dim`. Under
  HMDN the condition carries the hierarchical representation s_D, so the gate
  mixes experts by distribution rather than by scenario alone.
  """

  reads_condition = True
  reads_domain = False

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               num_experts: int = 4,
               expert_units: Sequence[int] = (64, 32),
               gate_units: Sequence[int] = (),
               tower_units: Sequence[int] = (),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.num_experts = base.check_positive("num_experts", num_experts)
    self.expert_units = base.check_units("expert_units", expert_units,
                                         allow_empty=False)
    self.gate_units = base.check_units("gate_units", gate_units)
    self.tower_units = base.check_units("tower_units", tower_units)
    self.dropout = base.check_dropout(dropout)
    self._experts = experts.ExpertBank(self.num_experts, self.expert_units,
                                       self.dropout, name="experts")
    self._gate = experts.SoftmaxGate(self.num_experts, self.gate_units,
                                     self.dropout, name="gate")
    self._tower = MLP(self.tower_units + [self.output_dim],
                      dropout=self.dropout, name="tower")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """{"features": [B, F], "condition": [B, C]} -> [B, output_dim]."""
    features, condition, _ = self.unpack(inputs)
    mixture = experts.mix(self._experts(features, training=training),
                          self._gate(condition, training=training))
    return self._tower(mixture, training=training)

  def get_config(self):
    config = super().get_config()
    config.update(num_experts=self.num_experts, expert_units=self.expert_units,
                  gate_units=self.gate_units, tower_units=self.tower_units,
                  dropout=self.dropout)
    return config
