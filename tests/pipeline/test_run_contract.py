"""The run-directory contract as the trainer and the CLI use it: nothing is written
before the record is checked, evaluate/export take the model from the run, a checkpoint
restores completely, best is the best epoch of the whole run, options are range-checked,
a diverged run is never kept, relative paths work from anywhere (issue 12)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import preprocessed
from hmdn.features.preprocessed import PreprocessedData
from hmdn.features.run_directory import RunDirectory, RunMismatchError
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import callbacks as callbacks_lib
from hmdn.pipeline import run_length, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pythonpath() -> str:
  """ROOT before the caller's path: a checkout whose package is mapped by PYTHONPATH
  (a worktree of an editable install) runs its own code in the subprocess too."""
  return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


FAST = dict(batch_size=128, steps_per_epoch=3, keep_checkpoints=1)
HMDN_FLAGS = ["--batch_size=128", "--steps_per_epoch=3", "--epochs=1", "--num_levels=2",
              "--codebook_size=4", "--codebook_warmup_steps=1"]


def hmdn(*args, cwd=ROOT, timeout=400):
  return subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONPATH=_pythonpath()))


def _one_line_error(proc, *expected):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  for text in expected:
    assert text in last, last
  return last


def _config(data_dir, model_dir, name="moe", **kwargs):
  return train.TrainConfig(data_dir=data_dir, model_dir=str(model_dir),
                           model=ModelConfig.of(name=name), **dict(FAST, **kwargs))


# --- TrainConfig ranges ------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("learning_rate", float("nan")), ("learning_rate", -1.0), ("learning_rate", 0.0),
    ("learning_rate", float("inf")), ("batch_size", 0), ("epochs", 0),
    ("steps_per_epoch", -1), ("warmup_steps", -2), ("keep_checkpoints", -1),
    ("backup_every_steps", -1), ("early_stopping_patience", -1),
    ("steps_per_execution", 0), ("shuffle_window", 0)])
def test_out_of_range_options_name_the_flag_and_value(field, value):
  config = train.TrainConfig(data_dir="d", model_dir="m", **{field: value})
  with pytest.raises(ValueError, match=rf"--{field}={value!r}"):
    config.validate()


def test_defaults_are_valid():
  train.TrainConfig(data_dir="d", model_dir="m").validate()


@pytest.mark.parametrize("flag", ["--learning_rate=nan", "--learning_rate=-1",
                                  "--batch_size=0", "--epochs=0"])
def test_cli_refuses_bad_ranges_before_any_work(flag, planted_data_dir, tmp_path):
  model_dir = tmp_path / "model"
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              flag)
  _one_line_error(proc, flag.split("=")[0])
  assert not model_dir.exists()


def test_deterministic_runs_with_one_seed_are_identical(planted_data_dir, tmp_path):
  """--deterministic: two runs, same seed, same model to the last bit (in processes of
  their own: op determinism is process-wide). hmdn_moe: the quantizer's k-means
  seeding and code assignments included."""
  summaries = []
  for name in ("a", "b"):
    proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={tmp_path / name}",
                "--model=hmdn_moe", "--epochs=1", "--steps_per_epoch=8",
                "--batch_size=128", "--num_levels=2", "--codebook_size=4",
                "--codebook_warmup_steps=3", "--seed=3", "--deterministic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / name / "train_summary.json") as f:
      summaries.append(json.load(f))
  a, b = summaries
  assert a["final"]["auc"] == b["final"]["auc"]
  assert a["final"]["logloss"] == b["final"]["logloss"]
  assert a["epochs"][0]["loss"] == b["epochs"][0]["loss"]


def test_hmdn_run_shorter_than_its_codebook_warmup_is_refused(planted_data_dir, tmp_path):
  """Else the quantizer never starts: every code 0, s_D constant, exit 0."""
  model_dir = tmp_path / "model"
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=hmdn_moe", "--epochs=2", "--steps_per_epoch=3",
              "--codebook_warmup_steps=6")
  _one_line_error(proc, "--codebook_warmup_steps=6", "only 6 training steps")
  assert not model_dir.exists()
  with pytest.raises(ValueError, match="never start"):  # not for a plain backbone
    run_length.check_quantizer_starts(train.TrainConfig(
        data_dir="d", model_dir="m", epochs=1, model=ModelConfig.of(
            name="hmdn_moe", codebook_warmup_steps=5)), 5)
  run_length.check_quantizer_starts(train.TrainConfig(
      data_dir="d", model_dir="m", epochs=1, model=ModelConfig.of(
          name="moe", codebook_warmup_steps=5)), 5)
  run_length.check_quantizer_starts(train.TrainConfig(
      data_dir="d", model_dir="m", epochs=1, model=ModelConfig.of(
          name="hmdn_moe", codebook_warmup_steps=4)), 5)


# --- One run per directory -----------------------------------------------------------------
@pytest.fixture(scope="module")
def moe_run(planted_data_dir, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("contract") / "moe"
  # 3 steps in one execution: the callbacks and the summary work per epoch.
  train.train(_config(planted_data_dir, model_dir, epochs=2, steps_per_execution=3))
  return str(model_dir)


def test_record_holds_model_fingerprints_and_absolute_data_dir(moe_run, planted_data_dir):
  record = RunDirectory(moe_run).record()
  assert record["model_name"] == "moe" and record["model"]["name"] == "moe"
  assert record["model"]["output_dim"] == ModelConfig.of().output_dim
  assert record["fingerprints"] == preprocessed.fingerprints(planted_data_dir)
  assert record["data_dir"] == os.path.abspath(planted_data_dir)
  assert record["config"]["batch_size"] == 128 and "argv" in record


def test_history_summary_and_throughput_cover_every_epoch(moe_run):
  run = RunDirectory(moe_run)
  history = run.history()
  assert [h["epoch"] for h in history] == [1, 2]
  summary = json.load(open(run.summary_path))
  assert summary["epochs_run"] == 2
  assert summary["eval_auc_per_epoch"] == [h["auc"] for h in history]
  assert len(summary["examples_per_sec_per_epoch"]) == 2
  for h in history:
    # 3 steps of 128 examples in train_seconds: the rate is what the steps imply.
    assert h["examples_per_sec"] == pytest.approx(3 * 128 / h["train_seconds"],
                                                  rel=1e-6)
    assert 0 < h["step_time_ms"] <= 1000 * h["train_seconds"] / 3 + 1e-6
    assert set(h["per_distribution"]["scenario"]) == {"s0", "s1", "s2"}


def test_eval_event_files_hold_every_epoch(moe_run):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      os.path.join(RunDirectory(moe_run).logs_dir, "eval"),
      size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = acc.Tags()["tensors"]
  for tag in ("eval/auc", "eval_scenario/s0/auc", "throughput/examples_per_sec",
              "throughput/step_time_ms"):
    assert tag in tags, tags
    assert [e.step for e in acc.Tensors(tag)] == [1, 2]
  history = RunDirectory(moe_run).history()
  aucs = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("eval/auc")]
  np.testing.assert_allclose(aucs, [h["auc"] for h in history], rtol=1e-6)


def test_another_model_into_the_run_is_refused_and_nothing_is_rewritten(
    moe_run, planted_data_dir):
  run = RunDirectory(moe_run)
  before = open(run.config_path).read()
  with pytest.raises(RunMismatchError, match=r"--model=dnn contradicts .*--model=moe"):
    train.train(_config(planted_data_dir, moe_run, name="dnn"))
  with pytest.raises(RunMismatchError, match="finished run"):
    train.train(_config(planted_data_dir, moe_run, epochs=2))
  assert open(run.config_path).read() == before


def test_other_vocabularies_are_refused_by_train_and_load(moe_run, planted_data_dir,
                                                          tmp_path):
  other = str(tmp_path / "other_data")
  shutil.copytree(planted_data_dir, other)
  data = PreprocessedData(other)
  field = data.spec.vocabulary_fields[0].name
  with open(data.vocab_path(field), "a") as f:
    f.write("a_new_value\n")
  with pytest.raises(RunMismatchError, match="other vocabularies"):
    train.load_trained(other, moe_run)
  config = _config(other, moe_run)
  with pytest.raises(RunMismatchError, match="other vocabularies"):
    RunDirectory(moe_run).prepare(config, preprocessed.fingerprints(other), write=False)


def test_load_trained_takes_the_recorded_model_and_restores_completely(
    moe_run, planted_data_dir, tmp_path):
  model = train.load_trained(planted_data_dir, moe_run)
  assert model.config.name == "moe"
  with pytest.raises(RunMismatchError, match="--model=dnn contradicts"):
    train.load_trained(planted_data_dir, moe_run, given={"model": "dnn"})
  # A record that lies about the model: the checkpoint cannot fill its variables.
  copy = tmp_path / "copy"
  shutil.copytree(moe_run, copy)
  run = RunDirectory(str(copy))
  record = run.record()
  record["model"]["name"] = "dnn"
  run.write_record(record)
  with pytest.raises(RunMismatchError, match="does not restore every variable"):
    train.load_trained(planted_data_dir, str(copy))


def test_overwrite_replaces_a_finished_run(moe_run, planted_data_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(moe_run, copy)
  train.train(_config(planted_data_dir, copy, name="dnn", epochs=1, overwrite=True))
  run = RunDirectory(copy)
  assert run.record()["model"]["name"] == "dnn"
  assert [h["epoch"] for h in run.history()] == [1]


def test_checkpoints_without_a_record_are_not_trained_over(planted_data_dir, tmp_path):
  run = RunDirectory(str(tmp_path / "stale"))
  os.makedirs(run.backup_dir)
  with pytest.raises(RunMismatchError, match="--overwrite"):
    train.train(_config(planted_data_dir, run.model_dir))
  assert not run.has_run()


# --- Best across resumes -----------------------------------------------------------------
class _Evaluation(callbacks_lib.DistributionEvaluation):
  """The history logic of DistributionEvaluation with given AUCs instead of a pass."""

  def __init__(self, history, aucs):
    tf.keras.callbacks.Callback.__init__(self)
    self.history, self._aucs, self._on_history = list(history), aucs, None
    self.recovered, self._resumed = None, False

  def on_epoch_end(self, epoch, logs=None):
    self.history.append({"epoch": epoch + 1, "auc": self._aucs[epoch]})
    logs["val_exact_auc"] = self._aucs[epoch]


def test_best_checkpoint_is_the_best_epoch_of_the_whole_run(tmp_path):
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)
  # Epoch 1 (before a kill) scored 0.9; epoch 2 redone after the kill is replaced;
  # the resumed epochs 2-3 score lower: best must not be overwritten.
  evaluation = _Evaluation([{"epoch": 1, "auc": 0.9}, {"epoch": 2, "auc": 0.95}],
                           {1: 0.7, 2: 0.8, 3: 0.91})
  best = str(tmp_path / "best")
  model.fit(x, y, initial_epoch=1, epochs=3, verbose=0,
            callbacks=[evaluation, callbacks_lib.BestCheckpoint(best, evaluation)])
  assert [h["epoch"] for h in evaluation.history] == [1, 2, 3]
  assert not os.path.exists(best + ".index")
  model.fit(x, y, initial_epoch=3, epochs=4, verbose=0,
            callbacks=[evaluation, callbacks_lib.BestCheckpoint(best, evaluation)])
  assert os.path.exists(best + ".index")  # 0.91 > 0.9


def test_an_epoch_killed_before_its_evaluation_is_scored_on_resume(tmp_path):
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)
  # Epoch 2 trained and backed up, killed before its evaluation: resumed at epoch 3.
  evaluation = _Evaluation([{"epoch": 1, "auc": 0.6}], {1: 0.9, 2: 0.7})
  best = str(tmp_path / "best")
  model.fit(x, y, initial_epoch=2, epochs=3, verbose=0,
            callbacks=[evaluation, callbacks_lib.BestCheckpoint(best, evaluation)])
  assert [(h["epoch"], h["auc"]) for h in evaluation.history] == [
      (1, 0.6), (2, 0.9), (3, 0.7)]
  assert os.path.exists(best + ".index")  # epoch 2 (0.9) is the best so far


# --- Divergence ----------------------------------------------------------------------------
def test_a_diverging_run_stops_with_one_line_and_keeps_nothing(planted_data_dir,
                                                               tmp_path):
  model_dir = tmp_path / "diverged"
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=moe", "--learning_rate=1e30", "--batch_size=128",
              "--steps_per_epoch=5", "--epochs=2")
  _one_line_error(proc, "diverged")
  run = RunDirectory(str(model_dir))
  assert not run.has_checkpoint("best") and not run.has_checkpoint("final")
  assert not os.path.exists(run.summary_path)


def _fit_until_non_finite(x, y, steps_per_execution=1, on_epoch_begin=None):
  """fit on batches of 8 with the check: (the error's message, batch ends seen)."""
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse", steps_per_execution=steps_per_execution)
  seen = []
  record = tf.keras.callbacks.LambdaCallback(
      on_train_batch_end=lambda batch, logs: seen.append(batch),
      on_epoch_begin=lambda epoch, logs: on_epoch_begin and on_epoch_begin(model, epoch))
  stop = callbacks_lib.StopOnNonFiniteLoss()
  with pytest.raises(callbacks_lib.TrainingError) as error:
    with stop.raising_training_error():
      model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                callbacks=[stop, record])
  return str(error.value), seen


def test_training_stops_at_the_first_non_finite_loss():
  x = np.ones((32, 2), np.float32)
  x[20] = np.nan  # planted in the third batch of 8
  message, seen = _fit_until_non_finite(x, np.zeros((32, 1)))
  assert "loss is nan at epoch 1, step 3" in message, message
  assert seen == [0, 1]  # nothing after the non-finite step ran


def test_the_check_sees_every_step_of_an_execution_and_names_the_epoch():
  x = np.ones((32, 2), np.float32)
  y = np.zeros((32, 1), np.float32)
  y[25] = np.inf  # in the 4th batch: the second step of the second execution of 2
  message, seen = _fit_until_non_finite(x, y, steps_per_execution=2)
  assert "loss is inf at epoch 1, step 4" in message, message
  assert seen == [1]  # one batch hook per execution, none for the failed one
  # A finite first epoch, then weights that overflow the loss at once: the step is
  # counted within the epoch.

  def overflow(model, epoch):
    if epoch == 1:
      model.layers[0].kernel.assign([[1e30], [1e30]])
  message, _ = _fit_until_non_finite(x, np.zeros((32, 1)), on_epoch_begin=overflow)
  assert "loss is inf at epoch 2, step 1" in message, message


def test_other_errors_are_not_turned_into_training_errors():
  stop = callbacks_lib.StopOnNonFiniteLoss()
  with pytest.raises(tf.errors.InvalidArgumentError, match="unrelated"):
    with stop.raising_training_error():
      raise tf.errors.InvalidArgumentError(None, None, "unrelated")


def test_per_step_work_is_off_the_training_loop():
  # The loss check has no batch hook; the console's hooks (Throughput's clock after the
  # first execution, ProgressLine's lines) take the logs as tensors: nothing is read
  # back from the device between steps but a progress line's loss, every few seconds.
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  callbacks = tf.keras.callbacks.CallbackList([callbacks_lib.StopOnNonFiniteLoss()],
                                              model=model)
  assert not callbacks._should_call_train_batch_hooks
  for callback in (callbacks_lib.Throughput(8, steps_per_epoch=4),
                   callbacks_lib.ProgressLine(1, steps_per_epoch=4)):
    assert callback._supports_tf_logs, callback


def test_non_finite_weights_are_never_saved_as_best(tmp_path):
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(2,))])
  model.build()
  model.layers[0].kernel.assign([[np.nan], [0.0]])
  evaluation = _Evaluation([], {0: 0.8})
  evaluation.set_model(model)
  check = callbacks_lib.BestCheckpoint(str(tmp_path / "best"), evaluation)
  check.set_model(model)
  logs = {}
  evaluation.on_epoch_end(0, logs)
  with pytest.raises(callbacks_lib.TrainingError, match="non-finite"):
    check.on_epoch_end(0, logs)
  assert not os.path.exists(tmp_path / "best.index")


# --- The CLI on an HMDN run ----------------------------------------------------------------
@pytest.fixture(scope="module")
def hmdn_run(planted_data_dir, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("hmdn") / "model"
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=hmdn_moe", *HMDN_FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(model_dir), proc


def test_progress_is_one_line_per_epoch(hmdn_run):
  _, proc = hmdn_run
  lines = [l for l in proc.stdout.splitlines() if l.startswith("epoch ")]
  assert len(lines) == 1, proc.stdout
  assert "eval AUC" in lines[0] and "ex/s" in lines[0] and lines[0].startswith("epoch 1/1")
  assert "val_exact_auc" not in proc.stdout  # Keras' own verbose output is off


def test_export_and_evaluate_use_the_recorded_model(hmdn_run, planted_data_dir,
                                                    tmp_path):
  model_dir, _ = hmdn_run
  export_root = tmp_path / "export"
  proc = hmdn("export", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              f"--export_dir={export_root}")  # the default --model is dnn
  assert proc.returncode == 0, proc.stderr[-3000:]
  version = next(p for p in export_root.iterdir() if p.name.isdigit())
  from hmdn.pipeline import export
  assert export.read_model_config(str(version)).name == "hmdn_moe"
  proc = hmdn("evaluate", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=dnn")
  _one_line_error(proc, "--model=dnn", "--model=hmdn_moe")
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=dnn")
  _one_line_error(proc, "--model=dnn", "--model=hmdn_moe", "--overwrite")
  # The run's model decides what applies: its own HMDRR flag passes, a cross option
  # (it was trained with condition=coarsest) is refused, naming the flag.
  proc = hmdn("export", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              f"--export_dir={export_root}", "--cross_dim=4")
  _one_line_error(proc, "--cross_dim does not apply", "--condition=coarsest")


def test_a_model_flag_that_does_not_apply_is_refused_before_any_work(
    planted_data_dir, tmp_path):
  model_dir = tmp_path / "model"
  proc = hmdn("train", f"--data_dir={planted_data_dir}", f"--model_dir={model_dir}",
              "--model=dnn", "--num_levels=7")
  _one_line_error(proc, "--num_levels does not apply", "--model=dnn")
  assert not model_dir.exists()


def test_relative_paths_work_from_any_directory(tmp_path):
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  proc = hmdn("run", "--output_dir=rel/dir", "--rows=3000", "--model=dnn", "--epochs=1",
              "--batch_size=128", "--steps_per_epoch=3", "--direct_num_workers=1",
              cwd=str(cwd), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = cwd / "rel" / "dir"
  assert (out / "metrics.json").exists()
  record = RunDirectory(str(out / "model")).record()
  assert record["data_dir"] == str(out / "data")
  assert "fresh-process prediction" in proc.stdout
  # The same command again: the finished run is refused before anything is generated
  # or preprocessed; with --overwrite (what `make demo` passes) it runs again.
  args = ["run", "--output_dir=rel/dir", "--rows=3000", "--model=dnn", "--epochs=1",
          "--batch_size=128", "--steps_per_epoch=3", "--direct_num_workers=1"]
  again = hmdn(*args, cwd=str(cwd), timeout=600)
  _one_line_error(again, "holds a finished run", "--overwrite")
  assert "generated" not in again.stdout and "preprocess" not in again.stdout
  overwritten = hmdn(*args, "--overwrite", cwd=str(cwd), timeout=600)
  assert overwritten.returncode == 0, overwritten.stderr[-3000:]
  assert "fresh-process prediction" in overwritten.stdout
