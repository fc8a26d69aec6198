"""HiNet's scenario extraction layer with its Scenario-aware Attentive
Network."""
from typing import Sequence

import tensorflow as tf

from models.backbones import base
from models.backbones import experts
from models.mlp import MLP


class HiNet(base.Backbone):
  """HiNet (Zhou et al., arXiv 2303.06095), Sec. "Scenario
  Extraction Layer".

  Three representations of an example in scenario i: a scenario-shared mixture
  of experts, its scenario-specific mixture of experts, and the SAN output, a
  softmax-weighted sum of the OTHER scenarios' specific representations whose
  weights come from z (the SAN module). Their concatenation goes through a
  tower; the multi-task Task Extraction Layer reduces to that single tower here.
  """

  reads_condition = True
  reads_domain = True

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               num_shared_experts: int = 2,
               num_specific_experts: int = 2,
               expert_units: Sequence[int] = (64, 32),
               gate_units: Sequence[int] = (),
               san_units: Sequence[int] = (),
               tower_units: Sequence[int] = (64,),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.num_shared_experts = base.check_positive("num_shared_experts",
                                                  num_shared_experts)
    self.num_specific_experts = base.check_positive("num_specific_experts",
                                                    num_specific_experts)
    self.expert_units = base.check_units("expert_units", expert_units,
                                         allow_empty=False)
    self.gate_units = base.check_units("gate_units", gate_units)
    self.san_units = base.check_units("san_units", san_units)
    self.tower_units = base.check_units("tower_units", tower_units)
    self.dropout = base.check_dropout(dropout)
    d = self.num_domains
    self._shared_experts = experts.ExpertBank(
        self.num_shared_experts, self.expert_units, self.dropout,
        name="shared_experts")
    self._shared_gate = experts.SoftmaxGate(
        self.num_shared_experts, self.gate_units, self.dropout,
        name="shared_gate")
    self._specific_experts = [
        experts.ExpertBank(self.num_specific_experts, self.expert_units,
                           self.dropout, name=f"d{i}_experts") for i in range(d)
    ]
    self._specific_gates = [
        experts.SoftmaxGate(self.num_specific_experts, self.gate_units,
                            self.dropout, name=f"d{i}_gate") for i in range(d)
    ]
    # SAN attention logits over scenarios, from z (the scenario embedding).
    self._san = MLP(self.san_units + [d], output_activation=None,
                    dropout=self.dropout, name="san")
    self._tower = MLP(self.tower_units + [self.output_dim],
                      dropout=self.dropout, name="tower")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Maps {"features": [B, F], "condition": [B, C], "domain": [B]}.

    Returns [B, output_dim].
    """
    features, condition, domain = self.unpack(inputs)
    shared = experts.mix(self._shared_experts(features, training=training),
                         self._shared_gate(condition, training=training))
    specific = tf.stack([
        experts.mix(bank(features, training=training),
                    gate(condition, training=training))
        for bank, gate in zip(self._specific_experts, self._specific_gates)
    ], axis=1)  # [B, D, H]
    own = base.select_by_domain(specific, domain)
    # Attention over the other scenarios only: mask the own one out, then zero
    # it exactly (with a single scenario the SAN output is then all zeros).
    own_mask = tf.one_hot(domain, self.num_domains)
    logits = self._san(condition, training=training) - 1e9 * own_mask
    weights = tf.nn.softmax(logits, axis=-1) * (1.0 - own_mask)
    san = tf.einsum("bdh,bd->bh", specific, weights)
    return self._tower(tf.concat([shared, own, san], axis=-1),
                       training=training)

  def get_config(self):
    config = super().get_config()
    config.update(num_shared_experts=self.num_shared_experts,
                  num_specific_experts=self.num_specific_experts,
                  expert_units=self.expert_units, gate_units=self.gate_units,
                  san_units=self.san_units, tower_units=self.tower_units,
                  dropout=self.dropout)
    return config
