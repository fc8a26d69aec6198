"""The targets a model predicts, and ESMM's entire-space probabilities.

Each label field of the spec is a task. A task without `after` is its own head (as in
MMoE's two-task experiments); a task observed only after another's positive (a purchase
after a click) is ESMM's (Ma et al., arXiv 1804.07931) entire-space form: its head
predicts p(task | prerequisite), and the probability of its label over every impression
is the product down the chain, p(ctcvr) = p(ctr) * p(cvr). Both are outputs, so a
served model answers "will this impression convert" and "will a click convert".
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

# How an `after` task's head is trained: BCE of p(ctcvr) over every impression (ESMM),
# BCE of p(cvr) over the rows where the prerequisite is 1 only (the masked loss of
# EasyRec and of CVR models trained on clicks), or both summed.
CVR_LOSSES = ("entire", "masked", "both")
# Keeps log(1 - p) finite where a product of probabilities rounds to 1.
_LOG_ONE = -1e-7


@dataclasses.dataclass(frozen=True)
class Task:
  """One label field: its position among the labels and its prerequisite's."""
  name: str
  index: int
  after: Optional[int] = None  # index of the task it is observed after
  after_name: Optional[str] = None

  @property
  def given(self) -> str:
    """Suffix of the conditional outputs: "purchase_given_click"."""
    return f"{self.name}_given_{self.after_name}"


def tasks_of(spec) -> List[Task]:
  """The spec's label fields as tasks, in spec order (the first is the main one)."""
  names = [f.name for f in spec.labels]
  return [Task(f.name, i, None if f.after is None else names.index(f.after), f.after)
           for i, f in enumerate(spec.labels)]


def log_probabilities(tasks: Sequence[Task], head_logits: tf.Tensor
                      ) -> Dict[str, tf.Tensor]:
  """log p(label = 1) over every impression per task, from the heads' logits.

  head_logits: [B, T] float32; head t predicts its task given its prerequisite.
  Returns {task name: [B]}: a task's own log-sigmoid plus its prerequisite chain's.
  """
  own = tf.math.log_sigmoid(head_logits)
  out: Dict[str, tf.Tensor] = {}
  for task in sorted(tasks, key=lambda t: _depth(tasks, t)):
    value = own[:, task.index]
    if task.after is not None:
      value = value + out[tasks[task.after].name]
    out[task.name] = value
  return out


def _depth(tasks: Sequence[Task], task: Task) -> int:
  depth = 0
  while task.after is not None:
    task, depth = tasks[task.after], depth + 1
  return depth


def logit_of_log_probability(log_p: tf.Tensor) -> tf.Tensor:
  """log(p / (1 - p)) from log p, finite for p in (0, 1)."""
  log_p = tf.minimum(log_p, _LOG_ONE)
  return log_p - tf.math.log(-tf.math.expm1(log_p))


def bce_of_log_probability(labels: tf.Tensor, log_p: tf.Tensor) -> tf.Tensor:
  """Per-example binary cross-entropy of a probability given as its log: [B]."""
  log_p = tf.minimum(log_p, _LOG_ONE)
  return -(labels * log_p + (1.0 - labels) * tf.math.log(-tf.math.expm1(log_p)))
