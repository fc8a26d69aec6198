"""Training under a tf.distribute strategy chosen by name (see pipeline/strategies.py).

Batch-size semantics: `batch_size` is the GLOBAL batch (split across replicas by
tf.distribute); the learning rate applies to the mean loss over that global batch, so a
run on 1 or N replicas with the same global batch takes the same steps.

The run directory (`model_dir`) is `features.run_directory.RunDirectory`: its record
(`run_config.json`) is checked before anything is written, so a command never trains
over, resumes or reads a run it was not meant for. A killed run restarted with the same
command resumes from `backup/`; `history.json` keeps every epoch's exact eval metrics,
so `best` stays the best epoch of the whole run and the summary covers every epoch.
"""
import contextlib
import hashlib
import math
import os
import tempfile
from typing import Any, Dict, List, Optional

import tensorflow as tf

from hmdn.features import locks, options, ownership, preprocessed, run_directory
from hmdn.features.fileio import write_json_atomic
from hmdn.features.preprocessed import PreprocessedData
from hmdn.features.run_directory import RunDirectory, RunMismatchError
from hmdn.models import embedding
from hmdn.models.ctr_model import CTRModel
from hmdn.models.registry import ModelConfig
from hmdn.models.tasks import tasks_of
from hmdn.pipeline import callbacks as callbacks_lib
from hmdn.pipeline import data, evaluate, optimizers, strategies
from hmdn.pipeline.run_length import (check_lr_warmup, check_quantizer_starts,
                                      follow_codebook_warmup, hint_few_steps,
                                      steps_per_epoch)
from hmdn.pipeline.train_config import LR_SCHEDULES, TrainConfig

TrainingError = callbacks_lib.TrainingError  # a non-finite loss or weights


# Tables from this size on make Adam's every-row update the larger part of a step
# (benchmarks/optimizer_bench): the trainer then points at --optimizer=lazy_adam.
LAZY_ADAM_HINT_ROWS = 100_000


def build_model(data_dir: "str | PreprocessedData", model_config: ModelConfig
                ) -> CTRModel:
  """The model for a preprocessing output (its spec, vocabularies and moments), with
  its variables created by one call on two eval rows (inference: no codebook update)."""
  data_files = preprocessed.as_data(data_dir)
  spec = data_files.spec
  model = CTRModel(spec, data_files.vocab_dir, data_files.numeric_moments, model_config,
                   tables_dir=data_files.tables_dir)
  features, _ = next(iter(data.make_dataset(data_files, data.EVAL, spec, 2,
                                            training=False)))
  model(features)
  return model


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


def _writable(run: RunDirectory, path: str) -> str:
  """Only the chief writes into the run directory; other workers write the same
  layout under a scratch directory of their task and run (the same after a restart,
  so a resumed worker finds its best checkpoint; the backup is the run's own)."""
  if strategies.is_chief():
    return path
  return os.path.join(_scratch(run), os.path.relpath(path, run.model_dir))


def _scratch(run: RunDirectory) -> str:
  """A non-chief task's scratch directory for this run."""
  task = strategies.cluster_task()
  run_key = hashlib.sha256(run.model_dir.encode("utf-8")).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(),
                      f"hmdn-{task['type']}-{task['index']}-{run_key}")


def check_finite_weights(model: tf.keras.Model, what: str) -> None:
  """Refuses weights holding NaN or inf (a diverged run is never kept or served)."""
  variable = callbacks_lib.non_finite_weight(model)
  if variable is not None:
    raise TrainingError(f"{what}: variable {variable} holds non-finite values "
                        "(training diverged); nothing was saved or exported (lower "
                        "--learning_rate)")


def _seed(config: TrainConfig) -> None:
  tf.keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()


def _epoch_steps(config: TrainConfig, data_files: PreprocessedData,
                 strategy: tf.distribute.Strategy) -> int:
  """Steps of one epoch, after the checks that the batch fits the replicas and the
  split, and that an HMDN quantizer starts within the run."""
  train_rows = data_files.rows(data.TRAIN)
  if config.batch_size < strategy.num_replicas_in_sync:
    raise ValueError(f"--batch_size={config.batch_size} is smaller than the "
                     f"{strategy.num_replicas_in_sync} replicas")
  if train_rows < config.batch_size:
    raise ValueError(f"--batch_size={config.batch_size} is larger than the training "
                     f"split ({train_rows} rows)")
  steps = steps_per_epoch(config, train_rows)
  check_quantizer_starts(config, steps)
  check_lr_warmup(config, steps)
  return steps


def _train_input(config: TrainConfig, data_files: PreprocessedData, is_ps: bool,
                 skip_batches: int = 0):
  """The training split, batched per replica (a DatasetCreator under parameter-server
  training, which builds it on each worker), after `skip_batches` batches (those a
  resumed run's backup has trained)."""
  def dataset_fn(input_context: Optional[tf.distribute.InputContext] = None):
    batch = (input_context.get_per_replica_batch_size(config.batch_size)
             if input_context is not None else config.batch_size)
    return data.make_dataset(data_files, data.TRAIN, data_files.spec, batch,
                             training=True, seed=config.seed,
                             input_context=input_context, cache=config.cache_input,
                             shuffle_window=config.shuffle_window,
                             deterministic=config.deterministic,
                             skip_batches=skip_batches)

  if is_ps:
    return tf.keras.utils.experimental.DatasetCreator(dataset_fn)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return dataset_fn().with_options(options)


@contextlib.contextmanager
def _dtype_policy(name: str):
  """The Keras dtype policy is global: set for the model being built, restored after
  (layers keep the policy they were created with)."""
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)


def _compiled_model(config: TrainConfig, data_files: PreprocessedData,
                    strategy: tf.distribute.Strategy, epoch_steps: int) -> CTRModel:
  """The model and its optimizer, built inside the strategy's scope."""
  if config.jit_compile:
    tf.config.optimizer.set_jit("autoclustering")
  with _dtype_policy(config.mixed_precision), strategy.scope():
    model = build_model(data_files, config.model)
  with strategy.scope():
    optimizer = optimizers.make_optimizer(
        config.optimizer, _learning_rate(config, epoch_steps * config.epochs))
    if config.mixed_precision == "mixed_float16":  # float16 gradients underflow unscaled
      optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  steps_per_execution=config.steps_per_execution)
  return model


def _note_constant_numeric_fields(data_files: PreprocessedData) -> None:
  """Names the standardized numeric fields that took one value in training: the model
  learns nothing from them (they read 0 for any value), often a column blank or
  defaulted throughout the training window."""
  flat = [name for name, m in sorted(data_files.numeric_moments.items())
          if embedding.has_no_spread(float(m["mean"]), float(m["std"]))]
  if flat:
    print(f"note: numeric field(s) {flat} took one value in the training rows (std 0): "
          "they carry nothing the model can learn; check the column in the raw log",
          flush=True)


def _hint_lazy_adam(config: TrainConfig, model: CTRModel) -> None:
  """Points at --optimizer=lazy_adam when a table is large enough for it to pay."""
  largest = max(model.embeddings.num_ids.items(), key=lambda kv: kv[1],
                default=("", 0))  # (a spec may embed numeric fields only)
  if config.optimizer == "adam" and largest[1] >= LAZY_ADAM_HINT_ROWS:
    print(f"note: embedding table {largest[0]!r} has {largest[1]:,} rows; Adam updates "
          "every row every step, --optimizer=lazy_adam only the rows of the batch",
          flush=True)


def _callbacks(config: TrainConfig, run: RunDirectory, epoch_steps: int,
               evaluation: callbacks_lib.DistributionEvaluation,
               stop_on_non_finite: callbacks_lib.StopOnNonFiniteLoss, best_path: str,
               is_ps: bool, chief: bool, resume: bool = False
               ) -> List[tf.keras.callbacks.Callback]:
  """The callbacks in the order they must run."""
  callbacks = [
      # First: its clock stops before anything evaluates or saves.
      callbacks_lib.Throughput(config.batch_size, epoch_steps),
      # Then: nothing sees a diverged epoch.
      stop_on_non_finite,
      evaluation,
      callbacks_lib.BestCheckpoint(best_path, evaluation),
      callbacks_lib.KeepCheckpoints(_writable(run, run.epoch_checkpoints_dir),
                                    config.keep_checkpoints),
  ]
  if not is_ps:
    callbacks.append(tf.keras.callbacks.TensorBoard(
        _writable(run, run.logs_dir), update_freq=max(1, epoch_steps // 10)))
  if config.early_stopping_patience:
    callbacks.append(callbacks_lib.EarlyStopping(evaluation,
                                                 config.early_stopping_patience))
  if chief:
    callbacks.append(callbacks_lib.ProgressLine(
        config.epochs, evaluation, steps_per_epoch=epoch_steps,
        global_batch_size=config.batch_size))
  # Last: an epoch is backed up only once its metrics and checkpoints are written.
  # Every worker is given the run's backup: Keras has a non-chief write into
  # backup/workertemp_<id>/ (removed after each save) and restore from the chief's, so
  # every task of a killed multi-worker run resumes from the same epoch.
  callbacks.append(tf.keras.callbacks.BackupAndRestore(
      run.backup_dir,
      # Keras counts its batch hooks, one per execution of steps_per_execution steps.
      save_freq=(max(1, config.backup_every_steps // config.steps_per_execution)
                 if config.backup_every_steps else "epoch")))
  if chief and resume:  # after BackupAndRestore: it reads the restored step
    callbacks.append(callbacks_lib.ResumeLine(epoch_steps, run.backup_dir))
  return callbacks


def train(config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None,
          follow_codebook_warmup_steps: bool = False) -> CTRModel:
  """Trains (or resumes); returns the model holding the best-eval-AUC weights of the
  whole run (also saved as final). `follow_codebook_warmup_steps`: the codebook
  warm-up was not set by the user, so a new run shorter than it needs follows the
  run's length (`follow_codebook_warmup`). The chief holds the run directory's lock
  (`features.locks`) for the whole run and writes only into a directory of its own."""
  config.validate()
  config.model.validate()
  data_files = PreprocessedData(config.data_dir).check_complete()
  callbacks_lib.check_select_by(config.select_by, tasks_of(data_files.spec))
  config.model.check_tasks(tasks_of(data_files.spec)).check_sequences(data_files.spec)
  run = RunDirectory(config.model_dir)
  chief = strategies.is_chief()
  if not chief:
    return _train_held(config, strategy, data_files, run, chief,
                       follow_codebook_warmup_steps)
  created = "://" not in run.model_dir and not os.path.exists(run.model_dir)
  try:
    with locks.held(run.model_dir, "--model_dir"):
      run.claim()
      return _train_held(config, strategy, data_files, run, chief,
                         follow_codebook_warmup_steps)
  except BaseException:
    if created:  # refused or failed before writing anything: leave no directory
      ownership.unclaim_if_empty(run.model_dir)
      if os.path.isdir(run.model_dir) and not os.listdir(run.model_dir):
        os.rmdir(run.model_dir)
    raise


def _train_held(config: TrainConfig, strategy: Optional[tf.distribute.Strategy],
                data_files: PreprocessedData, run: RunDirectory, chief: bool,
                follow_codebook_warmup_steps: bool) -> CTRModel:
  """`train` once the chief holds the run directory."""
  fingerprints = preprocessed.fingerprints(data_files)
  resume = run.prepare(config, fingerprints, write=chief)  # before any write
  if not chief and not resume:  # a new run: nothing of an earlier one in the scratch
    preprocessed.delete_tree(_scratch(run))
  if resume:
    run.check_backup()  # a truncated backup: one line, before anything is built
  _seed(config)
  strategy = strategy or strategies.make_strategy(
      config.strategy, config.num_devices, config.tpu, config.ps_min_shard_bytes)
  if follow_codebook_warmup_steps and not resume:
    config = follow_codebook_warmup(
        config, steps_per_epoch(config, data_files.rows(data.TRAIN)),
        log=print if chief else _silent)
  steps = _epoch_steps(config, data_files, strategy)
  if chief:
    hint_few_steps(config, data_files.rows(data.TRAIN), steps)
    _note_constant_numeric_fields(data_files)
    replicas = strategy.num_replicas_in_sync
    print(f"training {config.model.name} with strategy {config.strategy!r} on "
          f"{replicas} replica{'s' * (replicas != 1)} ({_devices(strategy)}): global "
          f"batch {config.batch_size} ({config.batch_size // replicas} per replica), "
          f"{steps} steps per epoch x {config.epochs} epochs", flush=True)
  if chief and not resume:
    run.write_record(run_directory.run_record(config, fingerprints))
  is_ps = isinstance(strategy, tf.distribute.ParameterServerStrategy)
  # Keras restores a resumed run's step, not its input: the input skips the batches
  # trained before (each step reads one batch on every worker). Parameter-server
  # workers each read their own stream, with no step of their own to continue from.
  done = run.backup_steps_done() if resume and not is_ps else 0
  if chief and done:
    print(f"resuming: the input continues after the {done:,} batches the backup has "
          "trained (read again, not trained)", flush=True)
  elif chief and resume and is_ps:
    print("note: under parameter-server training a resumed run's input starts its "
          "data again (the backup holds the step, not each worker's position)",
          flush=True)
  train_input = _train_input(config, data_files, is_ps, skip_batches=done)
  model = _compiled_model(config, data_files, strategy, steps)
  if chief:
    _hint_lazy_adam(config, model)

  best_path = _writable(run, run.checkpoint(run.BEST_CHECKPOINT))
  evaluation = callbacks_lib.DistributionEvaluation(
      data_files, run.logs_dir,
      config.model.codebook_size if config.model.is_hmdn else None,
      config.model.code_views, write_summaries=chief,
      history=run.history() if resume else [],
      on_history=run.write_history if chief else None, select_by=config.select_by)
  # The loss is checked inside each step (under ParameterServerStrategy at epoch end).
  stop_on_non_finite = callbacks_lib.StopOnNonFiniteLoss(in_graph=not is_ps)
  with stop_on_non_finite.raising_training_error():
    model.fit(train_input, epochs=config.epochs, steps_per_epoch=steps,
              callbacks=_callbacks(config, run, steps, evaluation, stop_on_non_finite,
                                   best_path, is_ps, chief, resume), verbose=0)
  if tf.io.gfile.exists(best_path + ".index"):
    model.load_weights(best_path)
  check_finite_weights(model, "final weights")
  callbacks_lib.save_weights(model, _writable(run, run.checkpoint(run.FINAL_CHECKPOINT)))
  if chief:
    _write_summary(run, config, strategy, model, evaluation, data_files)
  return model


def _silent(*_, **__) -> None:
  """A log function that prints nothing (workers other than the chief)."""


def _devices(strategy: tf.distribute.Strategy) -> str:
  """The devices a strategy's replicas run on, short (`CPU:0, CPU:1`)."""
  try:
    devices = strategy.extended.worker_devices
  except (AttributeError, NotImplementedError, RuntimeError):  # the default strategy
    return "the default device"
  return ", ".join(d.split("device:")[-1] for d in devices) or "remote workers"


def _sharded_tables(model: CTRModel):
  """{variable name: shards} of embedding tables split across parameter servers."""
  out = {}
  for layer in model.embeddings.submodules:
    table = getattr(layer, "embeddings", None)  # tf.keras.layers.Embedding's table
    shards = getattr(table, "variables", None)  # set on a ShardedVariable only
    if isinstance(shards, (list, tuple)) and len(shards) > 1:
      out[layer.name] = len(shards)
  return out


def _write_summary(run, config, strategy, model, evaluation, data_files) -> None:
  """train_summary.json: every epoch of the run (across resumes), its throughput, and
  the exact eval metrics of the final weights (with several tasks: each task's AUC per
  epoch and final figures, and the best epoch by --select_by)."""
  final = evaluate.run(evaluate.model_predictor(model, data_files.spec), data_files)
  history = evaluation.history
  aucs = [h["auc"] for h in history]
  scores = [evaluation.score(h) for h in history]
  finite = [a for a in scores if a is not None and math.isfinite(a)]
  summary = {"strategy": config.strategy,
             "replicas": strategy.num_replicas_in_sync,
             "epochs_run": len(history),
             "eval_auc_per_epoch": aucs,
             "best_epoch": history[scores.index(max(finite))]["epoch"] if finite else None,
             "examples_per_sec_per_epoch": [h.get("examples_per_sec") for h in history],
             "step_time_ms_per_epoch": [h.get("step_time_ms") for h in history],
             "epochs": history,
             "final": {k: final[k] for k in ("auc", "logloss", "rows_eval")},
             "sharded_embeddings": _sharded_tables(model)}
  if "tasks" in final:
    summary["select_by"] = config.select_by
    summary["select_by_per_epoch"] = scores  # what best_epoch is the highest of
    summary["eval_auc_per_epoch_by_task"] = {
        name: [callbacks_lib.task_aucs(h).get(name) for h in history]
        for name in callbacks_lib.task_aucs(history[-1] if history else {})}
    summary["final"]["tasks"] = {
        name: {k: m[k] for k in ("auc", "logloss", "rows_eval")}
        for name, m in evaluate.task_results(final).items()}
  write_json_atomic(run.summary_path, summary)


def load_trained(data_dir: str, model_dir: str,
                 model_config: Optional[ModelConfig] = None,
                 given: Optional[Dict[str, Any]] = None) -> CTRModel:
  """Rebuilds a run's model and restores its final weights, completely or not at all.

  The model config is the run's record; `given` ({flag: value} the user set
  explicitly, each applying to the run's model) and `model_config` (a whole config)
  must agree with it, and `data_dir` must hold the
  spec and vocabularies the run was trained on (RunMismatchError otherwise)."""
  run = RunDirectory(model_dir)
  recorded = run.check_model(given or {}, ModelConfig)
  if model_config is not None:
    run.check_model(options.values_by_flag(model_config, applicable_only=True),
                    ModelConfig)
  config = model_config or recorded
  data_files = PreprocessedData(data_dir).check_complete()
  run.check_data(data_dir, preprocessed.fingerprints(data_files))
  path = run.checkpoint(run.FINAL_CHECKPOINT)
  if not run.has_checkpoint(run.FINAL_CHECKPOINT):
    raise FileNotFoundError(f"no trained weights at {path}; `hmdn train` has not "
                            "finished this run")
  model = build_model(data_files, config)
  try:
    status = model.load_weights(path)
  except (tf.errors.OpError, IndexError, ValueError) as e:  # a truncated .index/.data
    detail = (e.message if isinstance(e, tf.errors.OpError) else str(e)).strip()
    first = detail.splitlines()[0][:200] if detail else type(e).__name__
    raise RunMismatchError(f"{path} cannot be read ({first}): the checkpoint is truncated "
                           "or corrupt; retrain with --overwrite") from None
  try:
    # Every variable of the model restored; the optimizer's slots are not needed.
    status.assert_existing_objects_matched().expect_partial()
  except AssertionError as e:
    first = str(e).strip().splitlines()[0][:300]
    raise RunMismatchError(f"{path} does not restore every variable of the "
                           f"{config.name!r} model ({first})") from None
  check_finite_weights(model, path)
  return model
