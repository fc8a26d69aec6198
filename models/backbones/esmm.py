"""ESMM's own architecture: a separate MLP per task over the shared embeddings."""
from typing import Sequence

import tensorflow as tf

from hmdn.models.backbones import base
from hmdn.models.mlp import GroupedMLP


@tf.keras.utils.register_keras_serializable(package="hmdn")
class ESMM(base.Backbone):
  """ESMM (Ma et al., arXiv 1804.07931), Sec. 2.3: the CTR and CVR networks share
  only the embedding layer; each task has its own MLP.

  In a multi-task model the branch is the task (`task_branches = "task"`), so
  `num_domains` is the number of tasks and `domain` the task of each example; with
  one task it is a plain MLP. It reads no condition, so it has no HMDN variant: it
  is the reference the multi-task backbones are compared with.

  Args:
    num_domains: number of tasks (one MLP each).
    output_dim: width of the returned representation (each MLP's last layer).
    units: hidden layer sizes of each task's MLP before `output_dim`.
    dropout: dropout rate in [0, 1) between layers.
    **kwargs: standard `tf.keras.layers.Layer` arguments.
  """

  reads_condition = False
  reads_domain = True
  task_branches = "task"

  def __init__(self,
               num_domains: int,
               output_dim: int = 32,
               units: Sequence[int] = (128, 64),
               dropout: float = 0.0,
               **kwargs):
    super().__init__(num_domains, output_dim, **kwargs)
    self.set_options(units=units, dropout=dropout)
    self._towers = GroupedMLP(self.num_domains, self.units + [self.output_dim],
                              dropout=self.dropout, name="towers")

  def call(self, inputs, training: bool = False) -> tf.Tensor:
    """Runs each example's own task's MLP.

    Args:
      inputs: dict with "features" `[batch_size, F]` and integer "domain"
        `[batch_size]` (the task).
      training: whether dropout is active.

    Returns:
      `[batch_size, output_dim]`.
    """
    features, _, domain = self.unpack(inputs)
    # Every task's MLP, the own one kept: gathering an MLP's weights per example (the
    # per-domain layers' path for many branches) costs more than a few full MLPs.
    return base.select_by_domain(self._towers(features, training=training), domain)
