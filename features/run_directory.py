"""The run directory (`--model_dir`): its layout, the record of what produced it, and the
checks that stop a command from reading it as something it is not.

  run_config.json      model name and config, train config, fingerprints of the spec and
                       of the data directory's vocabularies/tables, versions (written by
                       `train`; `evaluate`, `export` and a resumed `train` read the model
                       config from here instead of trusting new flags)
  history.json         exact eval metrics of every epoch, across kills and resumes
  train_summary.json   what ran and the final metrics
  checkpoints/epoch/   the newest N epochs;  checkpoints/best  checkpoints/final
  backup/              BackupAndRestore state of an unfinished run
  logs/                TensorBoard

The trainer, evaluation, export and resume all go through `RunDirectory`, the run-side
counterpart of `features.preprocessed.PreprocessedData` (Beam-free, on `tf.io.gfile`).
"""
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

RUN_FORMAT = 1


class RunMismatchError(ValueError):
  """A command's flags or data contradict the run directory it was pointed at."""


def absolute(path: Optional[str]) -> Optional[str]:
  """A local path made absolute (so it means the same from any working directory, and
  in subprocesses started elsewhere); URLs such as gs://... are left as they are."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _read_json(path: str) -> Any:
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "r") as f:
    return json.loads(f.read())


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to `<path>.tmp`, then renames it: a reader never sees half a file."""
  import tensorflow as tf
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, default=_jsonable))
  tf.io.gfile.rename(tmp, path, overwrite=True)


class RunDirectory:
  """One training run's directory: paths, the run record, and its consistency checks."""

  CONFIG_FILE = "run_config.json"
  HISTORY_FILE = "history.json"
  SUMMARY_FILE = "train_summary.json"
  CHECKPOINTS_DIR = "checkpoints"
  EPOCH_CHECKPOINTS_DIR = "epoch"
  BEST_CHECKPOINT = "best"
  FINAL_CHECKPOINT = "final"
  BACKUP_DIR = "backup"
  LOGS_DIR = "logs"

  def __init__(self, model_dir: str):
    if not model_dir:
      raise ValueError("a run directory is needed (--model_dir)")
    self.model_dir = absolute(model_dir).rstrip("/")

  def __repr__(self) -> str:
    return f"RunDirectory({self.model_dir!r})"

  # --- Paths ------------------------------------------------------------------------
  def path(self, *parts: str) -> str:
    return "/".join([self.model_dir] + [p.strip("/") for p in parts])

  @property
  def config_path(self) -> str:
    return self.path(self.CONFIG_FILE)

  @property
  def history_path(self) -> str:
    return self.path(self.HISTORY_FILE)

  @property
  def summary_path(self) -> str:
    return self.path(self.SUMMARY_FILE)

  @property
  def checkpoints_dir(self) -> str:
    return self.path(self.CHECKPOINTS_DIR)

  def checkpoint(self, name: str) -> str:
    """`best` or `final` (TF checkpoint prefix: `<prefix>.index` marks it present)."""
    return self.path(self.CHECKPOINTS_DIR, name)

  @property
  def epoch_checkpoints_dir(self) -> str:
    return self.path(self.CHECKPOINTS_DIR, self.EPOCH_CHECKPOINTS_DIR)

  @property
  def backup_dir(self) -> str:
    return self.path(self.BACKUP_DIR)

  @property
  def logs_dir(self) -> str:
    return self.path(self.LOGS_DIR)

  # --- State ------------------------------------------------------------------------
  def _exists(self, path: str) -> bool:
    import tensorflow as tf
    return tf.io.gfile.exists(path)

  def has_run(self) -> bool:
    """A run was started here (its record exists)."""
    return self._exists(self.config_path)

  def has_checkpoint(self, name: str) -> bool:
    return self._exists(self.checkpoint(name) + ".index")

  def has_outputs(self) -> bool:
    """Checkpoints, a backup or a record: what `clear` removes."""
    return any(self._exists(self.path(name)) for name in (
        self.CONFIG_FILE, self.CHECKPOINTS_DIR, self.BACKUP_DIR))

  def is_unfinished(self) -> bool:
    """Started and not finished: BackupAndRestore state is there, no final weights."""
    return self._exists(self.backup_dir) and not self.has_checkpoint(
        self.FINAL_CHECKPOINT)

  def record(self) -> Dict[str, Any]:
    if not self.has_run():
      raise FileNotFoundError(
          f"{self.model_dir}: no {self.CONFIG_FILE}: not a run directory of `hmdn train`"
          " (or its training never started)")
    record = _read_json(self.config_path)
    if not isinstance(record, dict) or "model" not in record:
      raise RunMismatchError(f"{self.config_path}: not a run record of this version of "
                             "hmdn (no 'model' entry); retrain with --overwrite")
    return record

  def write_record(self, record: Mapping[str, Any]) -> None:
    write_json_atomic(self.config_path, dict(record, format=RUN_FORMAT))

  def history(self) -> List[Dict[str, Any]]:
    """Per-epoch eval metrics recorded so far (empty for a new run)."""
    if not self._exists(self.history_path):
      return []
    return list(_read_json(self.history_path))

  def write_history(self, history: Iterable[Mapping[str, Any]]) -> None:
    write_json_atomic(self.history_path, list(history))

  def clear(self) -> None:
    """Removes what a run writes (for `train --overwrite`); nothing else in the dir."""
    import tensorflow as tf
    for name in (self.CONFIG_FILE, self.HISTORY_FILE, self.SUMMARY_FILE):
      if self._exists(self.path(name)):
        tf.io.gfile.remove(self.path(name))
    for name in (self.CHECKPOINTS_DIR, self.BACKUP_DIR, self.LOGS_DIR):
      if self._exists(self.path(name)):
        tf.io.gfile.rmtree(self.path(name))

  # --- Checks -----------------------------------------------------------------------
  def check_model(self, given: Mapping[str, Any], remedy: Optional[str] = None
                  ) -> Dict[str, Any]:
    """The recorded model config; `given` holds the model options the user set
    explicitly, each of which must equal the recorded value. `remedy` replaces the
    advice at the end of the error."""
    recorded = self.record()["model"]
    for key, value in given.items():
      if key not in recorded:
        continue
      if _normalise(recorded[key]) != _normalise(value):
        flag = "--model" if key == "name" else f"--{key}"
        raise RunMismatchError(
            f"{flag}={_show(value)} contradicts the run in {self.model_dir}, trained "
            f"with {flag}={_show(recorded[key])}; " + (remedy or
            "drop the flag (the run's config is used) or point --model_dir at another "
            "run"))
    return dict(recorded)

  def check_data(self, data_dir: str, data_fingerprints: Mapping[str, str],
                 remedy: Optional[str] = None) -> None:
    """The data directory must hold the spec and vocabularies the run was trained on:
    another vocabulary would silently re-map embedding rows."""
    recorded = self.record().get("fingerprints", {})
    for key in ("spec", "vocabularies", "tables"):
      if key in recorded and recorded[key] != data_fingerprints.get(key):
        raise RunMismatchError(
            f"--data_dir={data_dir} has other {key} (fingerprint "
            f"{data_fingerprints.get(key)}) than the data the run in {self.model_dir} was "
            f"trained on ({self.record().get('data_dir')}, fingerprint {recorded[key]})"
            + (f"; {remedy}" if remedy else ""))


def _jsonable(value: Any) -> Any:
  """numpy scalars and arrays as numbers and lists; anything else as its text."""
  if hasattr(value, "tolist"):
    return value.tolist()
  return str(value)


def _normalise(value: Any) -> Any:
  """JSON round-trip, so tuples and lists (and int/float forms) compare equal."""
  return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
  return json.dumps(value, default=str) if not isinstance(value, str) else value
