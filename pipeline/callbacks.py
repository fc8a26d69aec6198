"""Keras callbacks of the trainer: exact per-distribution evaluation, the run's history
across resumes, early stopping, the best checkpoint, throughput, the progress line and divergence.

Keras' streaming AUC is approximate (thresholds) and gives no breakdown, so at the end of
every epoch `DistributionEvaluation` scores the eval split exactly (pipeline/metrics.py)
and logs overall, per-distribution and HMDN code-usage figures to TensorBoard and to the
epoch logs (`val_exact_auc`) and its history, where early stopping and the best
checkpoint read them. The history starts with the epochs of the run before a kill
(history.json), so early stopping counts them and the best checkpoint is the best
epoch of the whole run, not of the last process.

With several tasks each epoch also has every task's figures (history "tasks": {task:
{"auc", "logloss", "gauc", "per_distribution", and for a task after another "cvr":
the same over its prerequisite's positives}}, logs "val_exact_auc_<task>" and
"val_exact_auc_<task>_cvr", TensorBoard "eval_<task>/..."), and `--select_by`
(`select_by_choices`) says which figure picks the best epoch and stops early.
"""
import contextlib
import math
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from hmdn.features.preprocessed import PreprocessedData, as_data, delete_tree
from hmdn.pipeline import evaluate


# --select_by: the objective of the best checkpoint and of early stopping. FIRST: the
# first task's AUC (a one-task run's only choice); MEAN: the mean of every task's AUC
# over every row; a task's name: its AUC over every row (an after task's entire-space,
# CTCVR); "<task>_cvr": an after task's AUC over its prerequisite's positives.
FIRST = "first"
MEAN = "mean"
CVR_SUFFIX = evaluate.CVR_SUFFIX


def select_by_choices(tasks: Sequence) -> List[str]:
  """The --select_by values a spec's tasks (`models/tasks.py`) allow."""
  if len(tasks) == 1:
    return [FIRST]
  return [FIRST, MEAN] + [t.name for t in tasks] + [
      t.name + CVR_SUFFIX for t in tasks if t.after is not None]


def check_select_by(select_by: str, tasks: Sequence) -> str:
  """`select_by`, or a one-line error naming the flag, the value and the choices."""
  choices = select_by_choices(tasks)
  if select_by in choices:
    return select_by
  names = ", ".join(t.name for t in tasks)
  if len(tasks) == 1:
    raise ValueError(f"--select_by={select_by}: the spec has one task ({names}), whose "
                     f"AUC picks the best epoch; only --select_by={FIRST} applies")
  raise ValueError(f"--select_by={select_by}: not one of {', '.join(choices)} (the "
                   f"spec's tasks: {names})")


def objective(entry: Dict, select_by: str = FIRST) -> Optional[float]:
  """The figure of a history entry that `select_by` ranks epochs by (None: absent)."""
  if select_by == FIRST:
    return entry.get("auc")
  tasks = entry.get("tasks", {})
  if select_by == MEAN:
    aucs = [t.get("auc") for t in tasks.values()]
    return float(np.mean(aucs)) if aucs and all(_finite(a) for a in aucs) else None
  if select_by in tasks:
    return tasks[select_by].get("auc")
  name = select_by[:-len(CVR_SUFFIX)] if select_by.endswith(CVR_SUFFIX) else None
  return tasks.get(name, {}).get("cvr", {}).get("auc")


def _write_eval_scalars(prefix: str, result) -> None:
  """One evaluation's (or one task's) AUC, logloss, GAUC and per-distribution AUCs,
  as `<prefix>/<metric>` and `<prefix>_<field>/<value>/auc`."""
  for key in ("auc", "logloss", "gauc"):
    if key in result:
      tf.summary.scalar(f"{prefix}/{key}", result[key])
  for field, values in result["per_distribution"].items():
    for value, m in values.items():
      tf.summary.scalar(f"{prefix}_{field}/{value}/auc", m["auc"])


class TrainingError(ValueError):
  """Training cannot go on or its result must not be kept (a non-finite loss or
  weights): bad options or data, reported in one line with exit status 2."""


# TensorFlow writes a checkpoint's shards into `<prefix>_temp/` and merges them last.
CHECKPOINT_TEMP_SUFFIX = "_temp"


@contextlib.contextmanager
def removing_partial_checkpoint(prefix_pattern: str):
  """A failed checkpoint write (a full disk, a read-only directory) removes the
  `<prefix>_temp/` directory TensorFlow leaves; the checkpoint before it is intact."""
  try:
    yield
  except BaseException:
    for leftover in tf.io.gfile.glob(prefix_pattern + CHECKPOINT_TEMP_SUFFIX):
      delete_tree(leftover)
    raise


def save_weights(model: tf.keras.Model, path: str) -> None:
  """`model.save_weights(path)`, leaving nothing half written when it fails."""
  with removing_partial_checkpoint(path):
    model.save_weights(path)


def _finite(value) -> bool:
  try:
    return value is not None and math.isfinite(float(value))
  except (TypeError, ValueError):
    return False


def non_finite_weight(model: tf.keras.Model) -> Optional[str]:
  """The name of the first floating variable holding NaN or inf (None: all finite);
  checked where the weights live (no copy of every table to the host)."""
  for variable in model.weights:
    if variable.dtype.is_floating and not bool(
        tf.reduce_all(tf.math.is_finite(variable))):
      return variable.name
  return None


def _figures(result: Dict) -> Dict:
  """A task's figures worth comparing across epochs, as plain floats (JSON)."""
  entry = {"auc": float(result["auc"]), "logloss": float(result["logloss"])}
  if "gauc" in result:
    entry["gauc"] = float(result["gauc"])
  entry["per_distribution"] = {
      field: {str(value): float(m["auc"]) for value, m in values.items()}
      for field, values in result["per_distribution"].items()}
  return entry


def _epoch_entry(epoch: int, result: Dict, logs: Optional[Dict]) -> Dict:
  """One epoch of history.json: plain floats (JSON), the figures worth comparing."""
  entry = {"epoch": epoch + 1}
  entry.update(_figures(result))
  if "tasks" in result:
    entry["tasks"] = {}
    for name, task in result["tasks"].items():
      entry["tasks"][name] = _figures(task)
      if "cvr" in task:
        entry["tasks"][name]["cvr"] = _figures(task["cvr"])
  if result.get("codes"):
    entry["codes"] = {name: {"perplexity": float(u["perplexity"]),
                             "dead_share": float(u["dead_share"])}
                      for name, u in result["codes"].items()}
  for key in ("loss", "examples_per_sec", "step_time_ms", "train_seconds"):
    if logs is not None and _finite(logs.get(key)):
      entry[key] = float(logs[key])
  for key in sorted(logs or {}):  # each task's training loss (several tasks)
    if key.startswith("loss_") and _finite(logs[key]):
      entry[key] = float(logs[key])
  return entry


def task_aucs(entry: Dict) -> Dict[str, float]:
  """{select_by name: AUC} of every task of a history entry (empty for one task):
  "<task>" over every row, "<task>_cvr" over the prerequisite's positives."""
  out = {}
  for name, task in entry.get("tasks", {}).items():
    out[name] = task["auc"]
    if "cvr" in task:
      out[name + CVR_SUFFIX] = task["cvr"]["auc"]
  return out


class DistributionEvaluation(tf.keras.callbacks.Callback):
  """Exact eval metrics each epoch -> logs["val_exact_auc"], TensorBoard scalars and
  the run's history (`history`: earlier epochs of a resumed run; `on_history` is
  called with the whole history as each epoch ends, to persist it). `select_by`
  (`select_by_choices`, checked by the trainer) is the figure epochs are ranked by."""

  select_by = FIRST

  def __init__(self, data_dir: "str | PreprocessedData", log_dir: str,
               codebook_size: Optional[int] = None, code_views: Optional[List] = None,
               write_summaries: bool = True, history: Optional[List[Dict]] = None,
               on_history: Optional[Callable[[List[Dict]], None]] = None,
               select_by: str = FIRST):
    super().__init__()
    self.select_by = select_by
    self._data = as_data(data_dir)
    self._codebook_size = codebook_size
    self._code_views = code_views or []
    self._writer = (tf.summary.create_file_writer(os.path.join(log_dir, "eval"))
                    if write_summaries else None)
    self._on_history = on_history
    self.history: List[Dict] = list(history or [])
    self.recovered: Optional[Dict] = None  # an epoch evaluated only after a resume
    self._resumed = False

  def score(self, entry: Dict) -> Optional[float]:
    """The figure `select_by` ranks a history entry by (None: absent)."""
    return objective(entry, self.select_by)

  def score_of(self, epoch: int) -> Optional[float]:
    """The score of the epoch numbered `epoch` (1-based), None if not evaluated."""
    found = [h for h in self.history if h["epoch"] == epoch]
    return self.score(found[-1]) if found else None

  def best_before(self, epoch: int) -> Optional[float]:
    """The best finite score of the epochs numbered below `epoch` (1-based)."""
    scores = [self.score(h) for h in self.history if h["epoch"] < epoch]
    scores = [s for s in scores if _finite(s)]
    return max(scores) if scores else None

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None):
    # A resumed run may redo an epoch whose metrics were recorded before the kill.
    self.history = [h for h in self.history if h["epoch"] <= epoch]
    self.recovered = None
    if self._resumed:
      return
    self._resumed = True
    if epoch > 0 and not any(h["epoch"] == epoch for h in self.history):
      # Killed after the backup of epoch `epoch`'s last step, before its evaluation:
      # the restored weights are that epoch's, so it is scored now.
      self.on_epoch_end(epoch - 1, {})
      self.recovered = self.history[-1]

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    result = evaluate.run(evaluate.model_predictor(self.model, self._data.spec),
                          self._data, self._codebook_size, self._code_views)
    entry = _epoch_entry(epoch, result, logs)
    self.history.append(entry)
    if logs is not None:
      logs["val_exact_auc"] = result["auc"]
      logs["val_exact_logloss"] = result["logloss"]
      for name, auc in task_aucs(entry).items():
        logs[f"val_exact_auc_{name}"] = auc
    if self._on_history is not None:
      self._on_history(self.history)
    if self._writer is None:
      return
    # Keras' TensorBoard callback leaves a record_if(False) condition active at epoch
    # end; without this the eval event file stays empty.
    with tf.summary.record_if(True), self._writer.as_default(step=epoch + 1):
      _write_eval_scalars("eval", result)
      for name, task in evaluate.task_results(result).items():
        _write_eval_scalars(f"eval_{name}", task)
      for name, usage in result.get("codes", {}).items():
        tf.summary.scalar(f"codes/{name}/perplexity", usage["perplexity"])
        tf.summary.scalar(f"codes/{name}/dead_share", usage["dead_share"])
      for key in ("examples_per_sec", "step_time_ms"):
        if key in entry:
          tf.summary.scalar(f"throughput/{key}", entry[key])
    self._writer.flush()


NON_FINITE_LOSS = "hmdn: non-finite training loss"  # the in-graph check's message


def _diverged(loss, where: str) -> TrainingError:
  return TrainingError(f"training diverged: the loss is {loss} at {where}; nothing was "
                       "saved as best or final (lower --learning_rate)")


class StopOnNonFiniteLoss(tf.keras.callbacks.Callback):
  """Stops training at the first non-finite loss (and at the end of an epoch whose
  weights are not finite), before any checkpoint of the diverged weights is written:
  it comes first in the callback list.

  The loss is checked inside the training step (`set_model` wraps the model's
  `train_step` with an assertion), not in a batch hook: reading the loss back each
  step would stall the device and run Python between steps, and with
  `steps_per_execution` > 1 a batch hook would not even see every step. The assertion
  fails the step as a tf.errors.InvalidArgumentError; run `fit` inside
  `with callback.raising_training_error():` to get a one-line TrainingError naming the
  epoch and step. `in_graph=False` (ParameterServerStrategy) checks at epoch end only.
  """

  def __init__(self, in_graph: bool = True):
    super().__init__()
    self._in_graph = in_graph
    self._epoch = 0
    self._first_step = 0  # the optimizer's iterations when the epoch began

  def set_model(self, model: tf.keras.Model):
    super().set_model(model)
    if self._in_graph and not getattr(model, "_hmdn_checks_loss", False):
      model.train_step = _checking_loss(model.train_step, model)
      model._hmdn_checks_loss = True
      model.train_function = None  # rebuilt by fit around the checked step

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None):
    self._epoch = epoch
    self._first_step = _iterations(self.model)

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    loss = (logs or {}).get("loss")
    if loss is not None and not _finite(loss):
      raise _diverged(loss, f"the end of epoch {epoch + 1}")
    # A saturated loss can stay finite while the weights overflow.
    if non_finite_weight(self.model) is not None:
      raise TrainingError(f"training diverged: the weights hold non-finite values at "
                          f"the end of epoch {epoch + 1}; nothing was saved as best or "
                          "final (lower --learning_rate)")

  @contextlib.contextmanager
  def raising_training_error(self):
    """Turns the in-graph check's failure into TrainingError (other errors pass)."""
    try:
      yield
    except tf.errors.InvalidArgumentError as e:
      found = re.search(
          re.escape(NON_FINITE_LOSS) + r"\] \[step\] \[(-?\d+)\] \[loss\] \[([^\]]+)\]",
          e.message or "")
      if found is None:
        raise
      step = int(found.group(1)) - self._first_step
      raise _diverged(found.group(2), f"epoch {self._epoch + 1}, step {step}") from None


def _iterations(model: Optional[tf.keras.Model]) -> int:
  optimizer = getattr(model, "optimizer", None)
  iterations = getattr(optimizer, "iterations", None)
  return int(iterations.numpy()) if iterations is not None else 0


def _checking_loss(train_step: Callable, model: tf.keras.Model) -> Callable:
  """`train_step` whose returned "loss" must be finite (an assertion in the graph,
  after the step's updates: the optimizer's iterations then number the step)."""

  def checked(data):
    logs = train_step(data)
    loss = logs.get("loss") if isinstance(logs, dict) else None
    if loss is None:
      return logs
    step = model.optimizer.iterations if model.optimizer is not None else -1
    check = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(loss)),
        [NON_FINITE_LOSS, "step", step, "loss", loss], summarize=1)
    with tf.control_dependencies([check]):
      return dict(logs, loss=tf.identity(loss))
  return checked


class Throughput(tf.keras.callbacks.Callback):
  """Training examples/s and mean step time of each epoch (evaluation excluded) ->
  logs["examples_per_sec"], logs["step_time_ms"], logs["train_seconds"].

  The rate is timed from the end of the epoch's first execution of steps to the
  epoch's end: the first step of a run also traces and compiles the step function
  (epoch 1 read 875 ex/s against 58k after), which is not the training rate. An epoch
  of one execution is timed whole. The steps are counted by the optimizer (a resumed
  epoch may run fewer than `steps_per_epoch`); the batch hook only reads a clock (no
  step output is read back). It comes before every other callback's epoch end (they
  evaluate and save, which is not training).
  """

  def __init__(self, global_batch_size: int, steps_per_epoch: int):
    super().__init__()
    self._batch = global_batch_size
    self._steps_per_epoch = steps_per_epoch
    self._supports_tf_logs = True  # the logs are never read: no copy to the host

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None):
    self._first_step = _iterations(self.model)
    self._start = time.perf_counter()
    self._after_first: Optional[tuple] = None  # (time, iterations) after the first

  def on_train_batch_end(self, batch: int, logs: Optional[Dict] = None):
    if self._after_first is None:
      self._after_first = (time.perf_counter(), _iterations(self.model))

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    end = time.perf_counter()
    seconds = end - self._start
    steps = _iterations(self.model) - self._first_step
    if steps <= 0:  # no optimizer step count (or a schedule-free optimizer)
      steps = self._steps_per_epoch
    if logs is None or not steps or seconds <= 0:
      return
    timed_steps, timed_seconds = steps, seconds
    if self._after_first is not None:
      later = _iterations(self.model) - self._after_first[1]
      if later > 0 and end > self._after_first[0]:
        timed_steps, timed_seconds = later, end - self._after_first[0]
    logs["examples_per_sec"] = timed_steps * self._batch / timed_seconds
    logs["step_time_ms"] = 1000.0 * timed_seconds / timed_steps
    logs["train_seconds"] = seconds


class ResumeLine(tf.keras.callbacks.Callback):
  """One line when a run resumes: from which epoch and step (read after
  BackupAndRestore restored the state: it must come after it in the list)."""

  def __init__(self, steps_per_epoch: int, backup_dir: str,
               print_fn: Callable[[str], None] = None):
    super().__init__()
    self._steps_per_epoch = steps_per_epoch
    self._backup_dir = backup_dir
    self._print = print_fn or (lambda line: print(line, flush=True))

  def on_train_begin(self, logs: Optional[Dict] = None):
    done = _iterations(self.model)
    if done <= 0:
      self._print(f"resuming: no backup of a training step in {self._backup_dir} yet; "
                  "training from epoch 1, step 0")
      return
    epoch, step = divmod(done, self._steps_per_epoch)
    self._print(f"resuming from {self._backup_dir}: epoch {epoch + 1}, step {step} of "
                f"{self._steps_per_epoch} ({done} steps done)")


def _rate(examples_per_sec: Optional[float]) -> str:
  if examples_per_sec is None:
    return "? ex/s"
  if examples_per_sec >= 10_000:
    return f"{examples_per_sec / 1000:.0f}k ex/s"
  if examples_per_sec >= 1000:
    return f"{examples_per_sec / 1000:.1f}k ex/s"
  return f"{examples_per_sec:.0f} ex/s"


class ProgressLine(tf.keras.callbacks.Callback):
  """One line per epoch, instead of Keras' progress bars:
  `epoch 2/3  loss 0.4100  eval AUC 0.7810  38k ex/s  12 s  ~24 s left`
  (loss: the epoch's mean; with several tasks each task's AUC, the first's first:
  `eval AUC click 0.7810 purchase 0.8120 purchase_cvr 0.6930`). Inside an
  epoch that lasts, the progress on stderr: one line every `interval` seconds when
  stderr is not a terminal (a log file), else one
  line redrawn in place each second. Reading the step's loss back is done only then.
  """

  def __init__(self, epochs: int, evaluation: Optional[DistributionEvaluation] = None,
               print_fn: Callable[[str], None] = None, steps_per_epoch: int = 0,
               global_batch_size: int = 0, stream=None, interval: float = 10.0):
    super().__init__()
    self._epochs = epochs
    self._evaluation = evaluation
    self._print = print_fn or (lambda line: print(line, flush=True))
    self._walls: List[float] = []
    self._steps = steps_per_epoch
    self._batch = global_batch_size
    self._stream = stream if stream is not None else sys.stderr
    isatty = getattr(self._stream, "isatty", None)
    self._tty = bool(isatty and isatty())
    self._interval = 1.0 if self._tty else interval
    self._drawn = False
    self._supports_tf_logs = True  # logs stay tensors until a line is due

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None):
    self._t0 = time.perf_counter()
    self._epoch = epoch
    self._last = self._t0
    self._first_step = _iterations(self.model)
    self._after_first: Optional[tuple] = None

  def on_train_batch_end(self, batch: int, logs: Optional[Dict] = None):
    now = time.perf_counter()
    if self._after_first is None:  # rates leave out the first execution (tracing)
      self._after_first = (now, _iterations(self.model))
      return
    if not self._steps or now - self._last < self._interval:
      return
    done = _iterations(self.model) - self._first_step
    timed = _iterations(self.model) - self._after_first[1]
    seconds = now - self._after_first[0]
    if timed <= 0 or seconds <= 0:
      return
    self._last = now
    parts = [f"epoch {self._epoch + 1}/{self._epochs}",
             f"step {done}/{self._steps}"]
    loss = (logs or {}).get("loss")
    if loss is not None and _finite(loss):
      parts.append(f"loss {float(loss):.4f}")
    if self._batch:
      parts.append(_rate(timed * self._batch / seconds))
    parts.append(f"~{seconds / timed * max(0, self._steps - done):.0f} s left in epoch")
    line = "  ".join(parts)
    if self._tty:
      self._stream.write("\r\033[K" + line)
      self._drawn = True
    else:
      self._stream.write(line + "\n")
    self._stream.flush()

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    if self._drawn:  # the redrawn line gives way to the epoch's line
      self._stream.write("\r\033[K")
      self._stream.flush()
      self._drawn = False
    logs = logs or {}
    wall = time.perf_counter() - self._t0
    self._walls.append(wall)
    parts = [f"epoch {epoch + 1}/{self._epochs}"]
    if _finite(logs.get("loss")):
      parts.append(f"loss {float(logs['loss']):.4f}")
    tasks = [k[len("val_exact_auc_"):] for k in logs if k.startswith("val_exact_auc_")]
    if tasks:  # several tasks: each one's AUC (_cvr: over its prerequisite's positives)
      parts.append("eval AUC " + " ".join(
          f"{name} {float(logs['val_exact_auc_' + name]):.4f}" for name in tasks))
    elif _finite(logs.get("val_exact_auc")):
      parts.append(f"eval AUC {float(logs['val_exact_auc']):.4f}")
    parts += [_rate(logs.get("examples_per_sec")), f"{wall:.0f} s"]
    if self.model is not None and self.model.stop_training:
      parts.append("early stop")
    elif epoch + 1 < self._epochs:
      parts.append(f"~{np.mean(self._walls) * (self._epochs - epoch - 1):.0f} s left")
    self._print("  ".join(parts))


class BestCheckpoint(tf.keras.callbacks.Callback):
  """Saves the weights when an epoch's exact eval score (the AUC `--select_by` names)
  beats every earlier epoch of the run, including epochs before a kill (read from the
  evaluation's history). Weights holding NaN/inf are never saved."""

  def __init__(self, path: str, evaluation: DistributionEvaluation):
    super().__init__()
    self._path = path
    self._evaluation = evaluation

  def on_epoch_begin(self, epoch: int, logs: Optional[Dict] = None):
    recovered = self._evaluation.recovered  # (after it in the callback list)
    if recovered is not None:
      self.on_epoch_end(recovered["epoch"] - 1, {})

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    score = self._evaluation.score_of(epoch + 1)
    if not _finite(score):
      return
    best = self._evaluation.best_before(epoch + 1)
    if best is not None and float(score) <= best:
      return
    if non_finite_weight(self.model) is not None:
      raise TrainingError(f"epoch {epoch + 1}: the weights hold non-finite values; "
                          "nothing was saved as best (lower --learning_rate)")
    save_weights(self.model, self._path)


class EarlyStopping(tf.keras.callbacks.Callback):
  """Stops training once `patience` epochs in a row have not beaten the best exact eval
  score of the run (the AUC `--select_by` names; a tie is no better), epochs before a
  kill included: read from the evaluation's history, as BestCheckpoint does (Keras'
  EarlyStopping starts counting afresh in a resumed process)."""

  def __init__(self, evaluation: DistributionEvaluation, patience: int):
    super().__init__()
    self._evaluation = evaluation
    self._patience = patience

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    best_epoch, best = 0, None
    for h in self._evaluation.history:
      score = self._evaluation.score(h)
      if h["epoch"] <= epoch + 1 and _finite(score) and (best is None or score > best):
        best_epoch, best = h["epoch"], score
    if epoch + 1 - best_epoch >= self._patience:
      self.model.stop_training = True


class KeepCheckpoints(tf.keras.callbacks.Callback):
  """Saves weights every epoch into `directory`, keeping the newest `keep` of them."""

  def __init__(self, directory: str, keep: int):
    super().__init__()
    self._directory = directory
    self._keep = keep
    self._manager = None

  def on_epoch_end(self, epoch: int, logs: Optional[Dict] = None):
    if not self._keep:
      return
    if self._manager is None:
      checkpoint = tf.train.Checkpoint(model=self.model)
      self._manager = tf.train.CheckpointManager(checkpoint, self._directory,
                                                 max_to_keep=self._keep)
    with removing_partial_checkpoint(os.path.join(self._directory, "ckpt-*")):
      self._manager.save(checkpoint_number=epoch + 1)
