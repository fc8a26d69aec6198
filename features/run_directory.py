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
It also holds the run policy: whether a train config may start, resume or replace the
run it is pointed at (`check_resumable`, `prepare`), what the record holds (`run_record`)
and the model config rebuilt from it (`model_config_from_record`). A train config here is
any dataclass with `data_dir`, `overwrite` and a nested `model` config with a `name`
(pipeline.train.TrainConfig); features never imports the trainer.
"""
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from hmdn.features import ownership
from hmdn.features import options
from hmdn.features.fileio import write_json_atomic

RUN_FORMAT = 1
# The advice at the end of every refusal of a run directory's contents.
RUN_REMEDY = "pass --overwrite to replace that run, or use another --model_dir"


class RunMismatchError(ValueError):
  """A command's flags or data contradict the run directory it was pointed at."""


def absolute(path: Optional[str]) -> Optional[str]:
  """A local path made absolute (so it means the same from any working directory, and
  in subprocesses started elsewhere); URLs such as gs://... are left as they are."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def _read_json(path: str) -> Any:
  import tensorflow as tf  # features stays TF-free on import
  with tf.io.gfile.GFile(path, "r") as f:
    return json.loads(f.read())


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
    import tensorflow as tf  # features stays TF-free on import
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

  def check_backup(self) -> None:
    """The unfinished run's backup can be read whole: a truncated one (a full disk, a
    copy cut short) is refused in one line, not deep inside Keras' restore."""
    import tensorflow as tf  # features stays TF-free on import
    # Keras keeps the chief's backup in backup/chief/ (a non-chief's is temporary).
    latest = tf.train.latest_checkpoint(self.path(self.BACKUP_DIR, "chief"))
    if latest is None:
      return
    try:
      reader = tf.train.load_checkpoint(latest)
      for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    except (tf.errors.OpError, IndexError, ValueError) as e:
      detail = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip()
      first = detail.splitlines()[0][:200] if detail else type(e).__name__
      raise RunMismatchError(
          f"{latest}: the backup of the unfinished run in {self.model_dir} cannot be "
          f"read ({first}): it is truncated or corrupt; pass --overwrite to start the "
          "run again") from None

  def backup_steps_done(self) -> int:
    """The optimizer steps the unfinished run's backup holds (0 without one): where a
    resumed run's input must continue, as Keras restores the step but not the data."""
    import tensorflow as tf  # features stays TF-free on import
    latest = tf.train.latest_checkpoint(self.path(self.BACKUP_DIR, "chief"))
    if latest is None:
      return 0
    reader = tf.train.load_checkpoint(latest)
    # model/optimizer/_iterations (or .../inner_optimizer/... under loss scaling)
    keys = sorted((k for k in reader.get_variable_to_shape_map()
                   if k.startswith("model/optimizer/")
                   and k.endswith("/_iterations/.ATTRIBUTES/VARIABLE_VALUE")), key=len)
    return int(reader.get_tensor(keys[0])) if keys else 0

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

  OUTPUT_NAMES = (CONFIG_FILE, HISTORY_FILE, SUMMARY_FILE, CHECKPOINTS_DIR, BACKUP_DIR,
                  LOGS_DIR)

  def claim(self) -> bool:
    """The directory is new, empty or a run directory (`features.ownership`): a folder
    of the user's is refused before anything is written. True when it held a run."""
    return ownership.claim(self.model_dir, ownership.RUN, "--model_dir",
                           signature=(self.CONFIG_FILE, self.CHECKPOINTS_DIR,
                                      self.BACKUP_DIR),
                           own=lambda name: name in self.OUTPUT_NAMES)

  def clear(self) -> None:
    """Removes what a run writes (for `train --overwrite`); nothing else in the dir."""
    import tensorflow as tf  # features stays TF-free on import
    for name in (self.CONFIG_FILE, self.HISTORY_FILE, self.SUMMARY_FILE):
      if self._exists(self.path(name)):
        tf.io.gfile.remove(self.path(name))
    for name in (self.CHECKPOINTS_DIR, self.BACKUP_DIR, self.LOGS_DIR):
      if self._exists(self.path(name)):
        tf.io.gfile.rmtree(self.path(name))

  # --- Checks -----------------------------------------------------------------------
  def model_config(self, config_class: type) -> Any:
    """The recorded model config as a `config_class` (`model_config_from_record`)."""
    return model_config_from_record(self.record()["model"], config_class)

  def check_model(self, given: Mapping[str, Any], config_class: type,
                  remedy: Optional[str] = None) -> Any:
    """The recorded model config (a `config_class`); `given` ({flag: value}) holds the
    model options the user set explicitly, each of which must equal the recorded value
    and apply to the run's model. `remedy` replaces the advice at the end of the error."""
    recorded = self.model_config(config_class)
    check_given_model(recorded, given, f"the run in {self.model_dir}, trained", remedy or (
        "drop the flag (the run's config is used) or point --model_dir at another run"))
    return recorded

  def check_training(self, given: Mapping[str, Any], fields: Sequence[str],
                     remedy: Optional[str] = None) -> Dict[str, Any]:
    """{field: recorded value} of the training options in `fields` that shape the run
    (learning rate, batch, schedule, epochs...), for a resumed run to keep. A flag in
    `given` ({field: value}, set explicitly) that differs from the record is refused:
    the backup restores the run's optimizer and schedule, so the new value would be
    dropped without a word. A record without a field leaves it to the flags."""
    recorded = self.record().get("config", {})
    for field, value in given.items():
      if field in fields and field in recorded and (
          _normalise(recorded[field]) != _normalise(value)):
        raise RunMismatchError(
            f"--{field}={_show(value)} contradicts the run in "
            f"{self.model_dir}, trained with --{field}={_show(recorded[field])}; "
            + (remedy or "drop the flag to resume it, or pass --overwrite to start "
               "again with the new value"))
    return {f: recorded[f] for f in fields if f in recorded}

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

  # --- Policy -----------------------------------------------------------------------
  def check_resumable(self, config: Any,
                      fingerprints: Optional[Mapping[str, str]] = None) -> None:
    """The run here (if any) is of the train `config`'s model, of the same data when
    its `fingerprints` are given, and unfinished; or `config.overwrite` is set. `hmdn
    run` calls it without fingerprints before it generates and preprocesses anything."""
    if config.overwrite:
      return
    if not self.has_run():
      if self.has_outputs():
        raise RunMismatchError(
            f"--model_dir={self.model_dir} holds checkpoints or a backup but no "
            f"{self.CONFIG_FILE}; pass --overwrite to replace them, or use another "
            "--model_dir")
      return
    self.check_model(options.values_by_flag(config.model, applicable_only=True),
                     type(config.model), remedy=RUN_REMEDY)
    if fingerprints is not None:
      self.check_data(config.data_dir, fingerprints, remedy=RUN_REMEDY)
    if self.has_checkpoint(self.FINAL_CHECKPOINT):
      raise RunMismatchError(
          f"--model_dir={self.model_dir} holds a finished run (checkpoints/final); "
          + RUN_REMEDY)

  def prepare(self, config: Any, fingerprints: Mapping[str, str],
              write: bool = True) -> bool:
    """Checks what the directory holds before anything is written. True: resume the
    unfinished run of the same model and data. False: a new run (with overwrite the
    old run's outputs are removed first, when `write`). Anything else is refused."""
    if config.overwrite:
      if write:
        self.clear()
      return False
    self.check_resumable(config, fingerprints)
    return self.has_run()


def _installed_version(distribution: str) -> str:
  """A package's version without importing it (the trainer never loads Beam)."""
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def run_record(config: Any, fingerprints: Mapping[str, str]) -> Dict[str, Any]:
  """What `run_config.json` holds for the train `config`: enough to rebuild the model
  and to recognise the data it was trained on."""
  # Imported here: features loads neither TensorFlow nor Keras on import.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_recommenders as tfrs  # pylint: disable=g-import-not-at-top
  return {"model_name": config.model.name,
          "model": options.to_record(config.model),  # only the options that apply
          "config": dict(dataclasses.asdict(config),
                         model=options.to_record(config.model)),
          "fingerprints": dict(fingerprints),
          "data_dir": absolute(config.data_dir),
          "versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                       "tfrs": tfrs.__version__,
                       "apache_beam": _installed_version("apache-beam"),
                       "platform": platform.platform()},
          "argv": sys.argv}


def model_config_from_record(recorded: Dict[str, Any], config_class: type) -> Any:
  """The recorded model options as a `config_class` (models.registry.ModelConfig,
  passed in: features does not import the models), from this version's record (nested,
  only the options that apply; the others take their defaults) or an older flat one.
  An option this version does not know is an error: the model could not be rebuilt as
  it was trained."""
  try:
    return options.from_record(config_class, recorded, RunMismatchError).validate()
  except (TypeError, ValueError) as e:
    raise RunMismatchError(f"the run's model config: {e}") from None


def check_given_model(recorded: Any, given: Mapping[str, Any], what: str,
                      remedy: str) -> None:
  """Each model flag in `given` ({flag: value}, set explicitly) equals the `recorded`
  config's value and applies to its model, else RunMismatchError: "--flag=x
  contradicts <what> with --flag=y; <remedy>" (a run directory, an export)."""
  values = options.values_by_flag(recorded, applicable_only=True)
  for flag, value in given.items():
    if flag in values and _normalise(values[flag]) != _normalise(value):
      raise RunMismatchError(f"--{flag}={_show(value)} contradicts {what} with "
                             f"--{flag}={_show(values[flag])}; {remedy}")
  options.refuse_inapplicable(recorded, given, RunMismatchError)


def _normalise(value: Any) -> Any:
  """JSON round-trip, so tuples and lists (and int/float forms) compare equal."""
  return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
  return json.dumps(value, default=str) if not isinstance(value, str) else value
