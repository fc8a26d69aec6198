"""Multi-gate Mixture-of-Experts with one gate and tower per domain."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.backbones import experts
from hmdn.models.mlp import GroupedMLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class MMoE(base.Backbone):
  """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018, Sec. "Multi-gate
  Mixture-of-Experts"; no arXiv version), one gate per domain.

  The tasks of MMoE become domains: shared MLP experts read the features, and
  each domain has its own softmax gate (reading the condition z) and tower.
  Each example runs its own domain's gate and tower (with few domains, all are
  computed and the own one kept: `base.runs_own_branch_only`).

  Args:
    num_domains: number of domains, i.e. of gates and towers.
    output_dim: width of the returned representation.
    num_experts: number of shared experts, at least 1.
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
  own_branch_from_domains = 4

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
    self.set_options(num_experts=num_experts, expert_units=expert_units,
                     gate_units=gate_units, tower_units=tower_units,
                     dropout=dropout)
    self._experts = experts.ExpertBank(self.num_experts, self.expert_units,
                                       self.dropout, name="experts")
    # One gate and one tower per domain, each computed for all domains at once.
    self._gates = experts.SoftmaxGate(self.num_experts, self.gate_units,
                                      self.dropout, num_gates=self.num_domains,
                                      name="gates")
    self._towers = GroupedMLP(self.num_domains,
                              self.tower_units + [self.output_dim],
                              dropout=self.dropout, name="towers")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Runs the example's own domain's gate and tower over the shared experts.

    Args:
      inputs: dict with "features" `[batch_size, F]`, "condition"
        `[batch_size, C]` and integer "domain" `[batch_size]`.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, domain = self.unpack(inputs)
    bank = self.on_feature_copy(lambda x: self._experts(x, training=training),
                                features)  # [B, E, H]
    if base.runs_own_branch_only(self.num_domains, self.own_branch_from_domains):
      weights = self._gates(condition, training=training, select=domain)  # [B, E]
      mixture = experts.mix(bank, weights)
      return self._towers(mixture, training=training, select=domain)[:, 0]
    weights = self._gates(condition, training=training)  # [B, domains, E]
    mixtures = tf.matmul(weights, bank)
    outputs = self._towers(mixtures, training=training)  # [B, domains, out]
    return base.select_by_domain(outputs, domain)
