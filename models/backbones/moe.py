"""Mixture-of-Experts backbone with one condition-reading gate."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.backbones import experts
from hmdn.models.mlp import MLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class MoE(base.Backbone):
  """One-gate Mixture-of-Experts (the One-gate MoE baseline of Ma et al.,
  KDD 2018, Sec. "Original Mixture-of-Experts"; no arXiv version).

  Shared MLP experts read the features; a single softmax gate reading the
  condition z weighs them, and a tower maps the mixture to `output_dim`. Under
  HMDN the condition carries the hierarchical representation s_D, so the gate
  mixes experts by distribution rather than by scenario alone.

  Args:
    num_domains: number of domains; kept for the common backbone interface.
    output_dim: width of the returned representation.
    num_experts: number of shared experts, at least 1.
    expert_units: layer sizes of each expert's MLP; at least one.
    gate_units: hidden layer sizes of the gate before its linear logits.
    tower_units: hidden layer sizes of the tower before `output_dim`.
    dropout: dropout rate in [0, 1) inside experts, gate and tower.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
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
    self.set_options(num_experts=num_experts, expert_units=expert_units,
                     gate_units=gate_units, tower_units=tower_units,
                     dropout=dropout)
    self._experts = experts.ExpertBank(self.num_experts, self.expert_units,
                                       self.dropout, name="experts")
    self._gate = experts.SoftmaxGate(self.num_experts, self.gate_units,
                                     self.dropout, name="gate")
    self._tower = MLP(self.tower_units + [self.output_dim],
                      dropout=self.dropout, name="tower")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Mixes the experts by the condition's gate.

    Args:
      inputs: dict with "features" `[batch_size, F]` and "condition"
        `[batch_size, C]`; "domain" is ignored if present.
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, condition, _ = self.unpack(inputs)
    mixture = experts.mix(self._experts(features, training=training),
                          self._gate(condition, training=training))
    return self._tower(mixture, training=training)
