"""Progressive Layered Extraction with per-domain experts, gates and towers."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.backbones import experts
from hmdn.models.mlp import GroupedMLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class PLE(base.Backbone):
  """Progressive Layered Extraction (Tang et al., RecSys 2020, Sec. "Customized
  Gate Control" and "Progressive Layered Extraction"; no arXiv version).

  A stack of `num_levels` Customized Gate Control (CGC) levels: each level has
  shared experts and `num_specific_experts` experts per domain. Domain d's gate
  reads [its level input, z] and mixes its own plus the shared experts; between
  levels a shared gate reading [shared input, z] mixes all experts. Per-domain
  towers finish, and each example keeps its own domain's output. With many
  domains the last level and the towers run for the example's own domain only
  (`base.runs_own_branch_only`); the levels below it need every domain's experts.

  Args:
    num_domains: number of domains (PLE's tasks): specific experts, gates and
      towers each come once per domain.
    output_dim: width of the returned representation.
    num_levels: number of stacked CGC levels, at least 1.
    num_shared_experts: shared experts per level, at least 1.
    num_specific_experts: experts per domain per level, at least 1.
    expert_units: layer sizes of each expert's MLP; at least one.
    gate_units: hidden layer sizes of each gate before its linear logits.
    tower_units: hidden layer sizes of each tower before `output_dim`.
    dropout: dropout rate in [0, 1) inside experts, gates and towers.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  reads_condition = True
  reads_domain = True
  task_branches = "task_domain"  # several tasks: a gate and tower per task and domain
  # Own gate and tower only from this many domains (base.runs_own_branch_only).
  own_branch_from_domains = 8

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               num_levels: int = 2,
               num_shared_experts: int = 2,
               num_specific_experts: int = 1,
               expert_units: Sequence[int] = (64, 32),
               gate_units: Sequence[int] = (),
               tower_units: Sequence[int] = (),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.set_options(num_levels=num_levels,
                     num_shared_experts=num_shared_experts,
                     num_specific_experts=num_specific_experts,
                     expert_units=expert_units, gate_units=gate_units,
                     tower_units=tower_units, dropout=dropout)

    d, s = self.num_domains, self.num_shared_experts
    p = self.num_specific_experts
    # Per level: the shared experts, the specific experts of every domain as
    # one bank (domain-major: domain i owns experts i*p .. i*p+p-1) and every
    # domain's gate as one grouped gate; each is one batched MatMul per layer.
    self._shared_experts, self._specific_experts = [], []
    self._domain_gates, self._shared_gates = [], []
    for level in range(self.num_levels):
      self._shared_experts.append(experts.ExpertBank(
          s, self.expert_units, self.dropout, name=f"l{level}_shared_experts"))
      self._specific_experts.append(experts.ExpertBank(
          d * p, self.expert_units, self.dropout,
          name=f"l{level}_specific_experts"))
      self._domain_gates.append(experts.SoftmaxGate(
          p + s, self.gate_units, self.dropout, num_gates=d,
          name=f"l{level}_domain_gates"))
      if level < self.num_levels - 1:  # the last level feeds the towers only
        self._shared_gates.append(experts.SoftmaxGate(
            d * p + s, self.gate_units, self.dropout,
            name=f"l{level}_shared_gate"))
    self._towers = GroupedMLP(d, self.tower_units + [self.output_dim],
                              dropout=self.dropout, name="towers")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Runs the CGC levels and every domain's tower; keeps the own domain.

    Args:
      inputs: dict with "features" `[batch_size, F]`, "condition"
        `[batch_size, C]` and integer "domain" `[batch_size]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, domain = self.unpack(inputs)
    d, p = self.num_domains, self.num_specific_experts
    own_only = base.runs_own_branch_only(d, self.own_branch_from_domains)
    # Level 0: every domain reads the features; above: [B, d, H], its own.
    domain_inputs, shared_input = features, features
    for level in range(self.num_levels):
      if own_only and level == self.num_levels - 1:
        return self._own_last_level(domain_inputs, shared_input, condition, domain,
                                    training)
      if level == 0:  # both read the features alone: once for every task's copy
        shared = self.on_feature_copy(
            lambda x: self._shared_experts[0](x, training=training), features)
        specific = self.on_feature_copy(
            lambda x: self._specific_experts[0](x, training=training), features)
      else:
        shared = self._shared_experts[level](shared_input, training=training)
        specific = self._specific_experts[level](
            tf.repeat(domain_inputs, p, axis=1), training=training)  # own domain's input
      hidden = specific.shape[-1]
      # Domain i mixes its own p experts and the shared ones: [B, d, p + s, H].
      candidates = tf.concat([
          tf.reshape(specific, [-1, d, p, hidden]),
          tf.repeat(shared[:, None], d, axis=1)], axis=2)
      if level == 0:
        gate_input = tf.concat([features, condition], -1)
      else:
        gate_input = tf.concat(
            [domain_inputs, tf.repeat(condition[:, None], d, axis=1)], -1)
      weights = self._domain_gates[level](gate_input, training=training)
      next_inputs = experts.mix(candidates, weights)
      if level < self.num_levels - 1:
        gate = self._shared_gates[level]
        shared_input = experts.mix(
            tf.concat([specific, shared], axis=1),
            gate(tf.concat([shared_input, condition], -1), training=training))
      domain_inputs = next_inputs
    outputs = self._towers(domain_inputs, training=training)  # [B, d, out]
    return base.select_by_domain(outputs, domain)

  def _own_last_level(self, domain_inputs, shared_input, condition, domain, training):
    """The last CGC level and the tower of each example's own domain only.

    The levels below need every domain (the shared gate between levels mixes all
    domains' experts, as in the paper); the last level feeds the towers alone, so
    its per-domain experts, gate and tower run for the example's domain only.
    """
    level = self.num_levels - 1
    own_input = (domain_inputs if level == 0 else
                 base.select_by_domain(domain_inputs, domain))  # [B, F] or [B, H]
    if level == 0:  # reads the features alone: once for every task's copy
      shared = self.on_feature_copy(
          lambda x: self._shared_experts[0](x, training=training), shared_input)
    else:
      shared = self._shared_experts[level](shared_input, training=training)
    specific = self._specific_experts[level](
        own_input, training=training, select=domain,
        members=self.num_specific_experts)  # [B, p, H]
    weights = self._domain_gates[level](tf.concat([own_input, condition], -1),
                                        training=training, select=domain)
    mixed = experts.mix(tf.concat([specific, shared], axis=1), weights)
    return self._towers(mixed, training=training, select=domain)[:, 0]
