"""Training under a tf.distribute strategy chosen by name (see pipeline/strategies.py).

Batch-size semantics: `batch_size` is the GLOBAL batch (split across replicas by
tf.distribute); the learning rate applies to the mean loss over that global batch, so a
run on 1 or N replicas with the same global batch takes the same steps.

Run directory (`model_dir`): `run_config.json` (config and versions), `logs/`
(TensorBoard), `backup/` (BackupAndRestore: a killed run restarted with the same command
resumes there), `checkpoints/epoch/` (the newest `keep_checkpoints`),
`checkpoints/best` (best exact eval AUC) and `checkpoints/final` (the weights returned).
"""
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from typing import Optional

import tensorflow as tf

from features.preprocessed import PreprocessedData
from models.ctr_model import CTRModel
from models.registry import ModelConfig
from pipeline import callbacks as callbacks_lib
from pipeline import data, evaluate, strategies

LR_SCHEDULES = ("constant", "cosine")


def _field(default, help_text: str, choices=None):
  """A config field whose default, help and choices the `hmdn` flags are made from."""
  metadata = {"help": help_text}
  if choices is not None:
    metadata["choices"] = choices
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
  data_dir: str = dataclasses.field(metadata={
      "help": "Preprocessed data (output of `preprocess`)."})
  model_dir: str = dataclasses.field(metadata={
      "help": "Checkpoints, TensorBoard logs, run config."})
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  strategy: str = _field("default", "tf.distribute strategy; multi-worker ones read "
                         "TF_CONFIG.", strategies.STRATEGIES)
  tpu: str = _field("", "tpu: the TPU name or grpc:// address.")
  num_devices: int = _field(0, "mirrored: number of devices (0 = all GPUs).")
  batch_size: int = _field(512, "GLOBAL batch size (over all replicas).")
  learning_rate: float = _field(2e-3, "Adam learning rate for the global batch.")
  lr_schedule: str = _field("constant", "Learning rate schedule (cosine decays to 0 "
                            "over the run, after --warmup_steps).", LR_SCHEDULES)
  warmup_steps: int = _field(0, "Linear warm-up steps of the cosine schedule.")
  epochs: int = _field(3, "Training epochs.")
  steps_per_epoch: int = _field(0, "0 = one pass over the training split.")
  early_stopping_patience: int = _field(0, "Stop after N epochs without a better exact "
                                        "eval AUC (0 = off).")
  keep_checkpoints: int = _field(3, "Epoch checkpoints kept.")
  backup_every_steps: int = _field(0, "Fault-tolerance backup frequency in steps (0 = "
                                   "each epoch).")
  ps_min_shard_bytes: int = _field(256 << 10, "parameter_server: embedding tables "
                                   "larger than this are sharded across the PS tasks.")
  seed: int = _field(0, "Seed of data generation, initialisation and shuffling.")


def build_model(data_dir: str, model_config: ModelConfig) -> CTRModel:
  """The model for a preprocessing output (its spec, vocabularies and moments), with
  its variables created by one call on two eval rows (inference: no codebook update)."""
  data_files = PreprocessedData(data_dir)
  spec = data_files.spec
  model = CTRModel(spec, data_files.vocab_dir, data_files.numeric_moments, model_config,
                   tables_dir=data_files.tables_dir)
  features, _ = next(iter(data.make_dataset(data_files, data.EVAL, spec, 2,
                                            training=False)))
  model(features)
  return model


def _installed_version(distribution: str) -> str:
  """A package's version without importing it (the trainer never loads Beam)."""
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def record_run(model_dir: str, config: TrainConfig) -> None:
  """Writes the full config and the versions used into the run directory."""
  tf.io.gfile.makedirs(model_dir)
  import tensorflow_recommenders as tfrs
  record = {"config": dataclasses.asdict(config),
            "versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                         "tfrs": tfrs.__version__,
                         "apache_beam": _installed_version("apache-beam"),
                         "platform": platform.platform()},
            "argv": sys.argv}
  with tf.io.gfile.GFile(os.path.join(model_dir, "run_config.json"), "w") as f:
    f.write(json.dumps(record, indent=1, default=str))


def _learning_rate(config: TrainConfig, total_steps: int):
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"--lr_schedule: expected one of {LR_SCHEDULES}, got "
                     f"{config.lr_schedule!r}")
  if config.lr_schedule == "cosine":
    warmup = min(config.warmup_steps, total_steps - 1)
    return tf.keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else config.learning_rate, max(total_steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)
  return config.learning_rate


def _writable_dir(model_dir: str, sub: str) -> str:
  """Only the chief writes into model_dir; other workers write to a scratch dir."""
  if strategies.is_chief():
    return os.path.join(model_dir, sub)
  task = strategies.cluster_task()
  return os.path.join(tempfile.gettempdir(),
                      f"hmdn-{task['type']}-{task['index']}-{os.getpid()}", sub)


def train(config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None
          ) -> CTRModel:
  """Trains; returns the model holding the best-eval-AUC weights (also saved as final)."""
  tf.keras.utils.set_random_seed(config.seed)
  strategy = strategy or strategies.make_strategy(
      config.strategy, config.num_devices, config.tpu, config.ps_min_shard_bytes)
  data_files = PreprocessedData(config.data_dir).check_complete()
  spec = data_files.spec
  if strategies.is_chief():
    record_run(config.model_dir, config)
  train_rows = data_files.rows(data.TRAIN)
  if config.batch_size < strategy.num_replicas_in_sync:
    raise ValueError(f"--batch_size={config.batch_size} is smaller than the "
                     f"{strategy.num_replicas_in_sync} replicas")
  if train_rows < config.batch_size:
    raise ValueError(f"--batch_size={config.batch_size} is larger than the training "
                     f"split ({train_rows} rows)")
  steps = config.steps_per_epoch or max(1, train_rows // config.batch_size)
  is_ps = isinstance(strategy, tf.distribute.ParameterServerStrategy)

  def dataset_fn(input_context: Optional[tf.distribute.InputContext] = None):
    batch = (input_context.get_per_replica_batch_size(config.batch_size)
             if input_context is not None else config.batch_size)
    return data.make_dataset(data_files, data.TRAIN, spec, batch, training=True,
                             seed=config.seed, input_context=input_context)

  if is_ps:
    train_input = tf.keras.utils.experimental.DatasetCreator(dataset_fn)
  else:
    train_input = dataset_fn()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    train_input = train_input.with_options(options)

  with strategy.scope():
    model = build_model(config.data_dir, config.model)
    model.compile(optimizer=tf.keras.optimizers.Adam(
        _learning_rate(config, steps * config.epochs)),
        steps_per_execution=1)

  best_path = os.path.join(_writable_dir(config.model_dir, "checkpoints"), "best")
  evaluation = callbacks_lib.DistributionEvaluation(
      data_files, os.path.join(config.model_dir, "logs"),
      config.model.codebook_size if config.model.is_hmdn else None,
      config.model.code_views, write_summaries=strategies.is_chief())
  callbacks = [
      tf.keras.callbacks.BackupAndRestore(
          _writable_dir(config.model_dir, "backup"),
          save_freq=config.backup_every_steps or "epoch"),
      evaluation,
      tf.keras.callbacks.ModelCheckpoint(best_path, monitor="val_exact_auc", mode="max",
                                         save_best_only=True, save_weights_only=True),
      callbacks_lib.KeepCheckpoints(
          os.path.join(_writable_dir(config.model_dir, "checkpoints"), "epoch"),
          config.keep_checkpoints),
  ]
  if not is_ps:
    callbacks.append(tf.keras.callbacks.TensorBoard(
        _writable_dir(config.model_dir, "logs"), update_freq=max(1, steps // 10)))
  if config.early_stopping_patience:
    callbacks.append(tf.keras.callbacks.EarlyStopping(
        monitor="val_exact_auc", mode="max", patience=config.early_stopping_patience))
  model.fit(train_input, epochs=config.epochs, steps_per_epoch=steps,
            callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
  if tf.io.gfile.exists(best_path + ".index"):
    model.load_weights(best_path)
  model.save_weights(os.path.join(_writable_dir(config.model_dir, "checkpoints"),
                                  "final"))
  if strategies.is_chief():
    _write_summary(config, strategy, model, evaluation, data_files)
  return model


def _sharded_tables(model: CTRModel):
  """{variable name: shards} of embedding tables split across parameter servers."""
  out = {}
  for layer in model.embeddings.submodules:
    table = getattr(layer, "embeddings", None)  # tf.keras.layers.Embedding's table
    shards = getattr(table, "variables", None)  # set on a ShardedVariable only
    if isinstance(shards, (list, tuple)) and len(shards) > 1:
      out[layer.name] = len(shards)
  return out


def _write_summary(config, strategy, model, evaluation, data_files) -> None:
  """train_summary.json: what ran and the exact eval metrics of the final weights."""
  final = evaluate.run(evaluate.model_predictor(model, data_files.spec), data_files)
  summary = {"strategy": config.strategy,
             "replicas": strategy.num_replicas_in_sync,
             "epochs_run": len(evaluation.history),
             "eval_auc_per_epoch": [h["auc"] for h in evaluation.history],
             "final": {k: final[k] for k in ("auc", "logloss", "rows_eval")},
             "sharded_embeddings": _sharded_tables(model)}
  with tf.io.gfile.GFile(os.path.join(config.model_dir, "train_summary.json"), "w") as f:
    f.write(json.dumps(summary, indent=1))


def load_trained(data_dir: str, model_dir: str, model_config: ModelConfig) -> CTRModel:
  """Rebuilds the model and restores the weights `train` saved."""
  model = build_model(data_dir, model_config)
  path = os.path.join(model_dir, "checkpoints", "final")
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"no trained weights at {path}; run `hmdn train` first")
  model.load_weights(path).expect_partial()
  return model
