"""Keras callbacks of the trainer: exact per-distribution evaluation and checkpoints.

Keras' streaming AUC is approximate (thresholds) and gives no breakdown, so at the end of
every epoch `DistributionEvaluation` scores the eval split exactly (pipeline/metrics.py)
and logs overall, per-distribution and HMDN code-usage figures to TensorBoard and to the
epoch logs (`val_exact_auc`), where early stopping and best checkpoints read them.
"""
import os
from typing import Dict, List, Optional

import tensorflow as tf

from features.preprocessed import PreprocessedData, as_data
from pipeline import evaluate


class DistributionEvaluation(tf.keras.callbacks.Callback):
  """Exact eval metrics each epoch -> logs["val_exact_auc"] and TensorBoard scalars."""

  def __init__(self, data_dir: "str | PreprocessedData", log_dir: str,
               codebook_size: Optional[int] = None, code_views: Optional[List] = None,
               write_summaries: bool = True):
    super().__init__()
    self._data = as_data(data_dir)
    self._codebook_size = codebook_size
    self._code_views = code_views or []
    self._writer = (tf.summary.create_file_writer(os.path.join(log_dir, "eval"))
                    if write_summaries else None)
    self.history: List[Dict] = []

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    result = evaluate.run(evaluate.model_predictor(self.model, self._data.spec),
                          self._data, self._codebook_size, self._code_views)
    self.history.append(result)
    if logs is not None:
      logs["val_exact_auc"] = result["auc"]
      logs["val_exact_logloss"] = result["logloss"]
    if self._writer is None:
      return
    with self._writer.as_default(step=epoch + 1):
      for key in ("auc", "logloss", "gauc"):
        if key in result:
          tf.summary.scalar(f"eval/{key}", result[key])
      for field, values in result["per_distribution"].items():
        for value, m in values.items():
          tf.summary.scalar(f"eval_{field}/{value}/auc", m["auc"])
      for name, usage in result.get("codes", {}).items():
        tf.summary.scalar(f"codes/{name}/perplexity", usage["perplexity"])
        tf.summary.scalar(f"codes/{name}/dead_share", usage["dead_share"])
    self._writer.flush()


class KeepCheckpoints(tf.keras.callbacks.Callback):
  """Saves weights every epoch into `directory`, keeping the newest `keep` of them."""

  def __init__(self, directory: str, keep: int):
    super().__init__()
    self._directory = directory
    self._keep = keep
    self._manager = None

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    if self._manager is None:
      checkpoint = tf.train.Checkpoint(model=self.model)
      self._manager = tf.train.CheckpointManager(checkpoint, self._directory,
                                                 max_to_keep=self._keep)
    self._manager.save(checkpoint_number=epoch + 1)
