"""HiNet's scenario extraction layer with its Scenario-aware Attentive
Network."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.backbones import experts
from hmdn.models.mlp import MLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class HiNet(base.Backbone):
  """HiNet (Zhou et al., arXiv 2303.06095), Sec. "Scenario Extraction
  Layer" with its Scenario-aware Attentive Network (SAN).

  Three representations of an example in scenario i: a scenario-shared mixture
  of experts, its scenario-specific mixture of experts, and the SAN output, a
  softmax-weighted sum of the OTHER scenarios' specific representations whose
  weights come from z (the SAN module). Their concatenation goes through a
  tower; the multi-task Task Extraction Layer reduces to that single tower here.

  Args:
    num_domains: number of scenarios: specific experts and gates come once
      per scenario, and SAN attends over the scenarios.
    output_dim: width of the returned representation.
    num_shared_experts: scenario-shared experts, at least 1.
    num_specific_experts: experts per scenario, at least 1.
    expert_units: layer sizes of each expert's MLP; at least one.
    gate_units: hidden layer sizes of each gate before its linear logits.
    san_units: hidden layer sizes of SAN's attention MLP over z.
    tower_units: hidden layer sizes of the tower before `output_dim`.
    dropout: dropout rate in [0, 1) inside experts, gates, SAN and tower.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
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
    self.set_options(num_shared_experts=num_shared_experts,
                     num_specific_experts=num_specific_experts,
                     expert_units=expert_units, gate_units=gate_units,
                     san_units=san_units, tower_units=tower_units,
                     dropout=dropout)
    d = self.num_domains
    self._shared_experts = experts.ExpertBank(
        self.num_shared_experts, self.expert_units, self.dropout,
        name="shared_experts")
    self._shared_gate = experts.SoftmaxGate(
        self.num_shared_experts, self.gate_units, self.dropout,
        name="shared_gate")
    # Every scenario's experts as one bank (scenario-major) and every
    # scenario's gate as one grouped gate: one batched MatMul per layer.
    self._specific_experts = experts.ExpertBank(
        d * self.num_specific_experts, self.expert_units, self.dropout,
        name="specific_experts")
    self._specific_gates = experts.SoftmaxGate(
        self.num_specific_experts, self.gate_units, self.dropout, num_gates=d,
        name="specific_gates")
    # SAN attention logits over scenarios, from z (the scenario embedding).
    self._san = MLP(self.san_units + [d], output_activation=None,
                    dropout=self.dropout, name="san")
    self._tower = MLP(self.tower_units + [self.output_dim],
                      dropout=self.dropout, name="tower")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Concatenates shared, own-scenario and SAN representations, then tower.

    Args:
      inputs: dict with "features" `[batch_size, F]`, "condition"
        `[batch_size, C]` and integer "domain" `[batch_size]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, domain = self.unpack(inputs)
    shared = experts.mix(self._shared_experts(features, training=training),
                         self._shared_gate(condition, training=training))
    bank = self._specific_experts(features, training=training)
    bank = tf.reshape(bank, [-1, self.num_domains, self.num_specific_experts,
                             bank.shape[-1]])  # [B, D, experts, H]
    weights = self._specific_gates(condition, training=training)  # [B, D, E]
    specific = experts.mix(bank, weights)  # [B, D, H]
    own = base.select_by_domain(specific, domain)
    # Attention over the other scenarios only: mask the own one out, then zero
    # it exactly (with a single scenario the SAN output is then all zeros).
    own_mask = tf.one_hot(domain, self.num_domains)
    logits = self._san(condition, training=training) - 1e9 * own_mask
    weights = tf.nn.softmax(logits, axis=-1) * (1.0 - own_mask)
    san = experts.mix(specific, weights)
    return self._tower(tf.concat([shared, own, san], axis=-1),
                       training=training)
