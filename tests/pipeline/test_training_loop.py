"""The training loop's run directory: config and versions, kept checkpoints, best
checkpoint, early stopping, TensorBoard scalars (per distribution, code usage), and
the learning-rate schedule."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.registry import ModelConfig
from hmdn.pipeline import run_length, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONSOLE = {}  # the `run` fixture's stdout


@pytest.fixture(scope="module")
def run(planted_data_dir, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("loop") / "model")
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "train", f"--data_dir={planted_data_dir}",
       f"--model_dir={model_dir}", "--model=hmdn_mmoe", "--epochs=5",
       "--keep_checkpoints=2", "--early_stopping_patience=1", "--lr_schedule=cosine",
       "--warmup_steps=3", "--batch_size=256", "--num_levels=2", "--codebook_size=4",
       "--codebook_warmup_steps=5", "--learning_rate=0.01"],
      cwd=ROOT, capture_output=True, text=True, timeout=500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  CONSOLE["stdout"] = proc.stdout
  return model_dir, planted_data_dir


def _scalars(pattern):
  tags = {}
  for path in glob.glob(pattern):
    for record in tf.data.TFRecordDataset(path):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
  return tags


def test_run_config_records_config_and_versions(run):
  model_dir, data_dir = run
  record = json.load(open(os.path.join(model_dir, "run_config.json")))
  assert record["config"]["model"]["name"] == "hmdn_mmoe"
  assert record["model"] == record["config"]["model"]  # what evaluate/export rebuild
  assert set(record["fingerprints"]) == {"spec", "vocabularies", "tables"}
  assert record["config"]["data_dir"] == data_dir
  assert record["config"]["lr_schedule"] == "cosine"
  assert record["versions"]["tensorflow"] == tf.__version__
  assert {"tfrs", "apache_beam", "python"} <= set(record["versions"])


def test_checkpoints_kept_and_best_is_the_best_epoch(run):
  model_dir, data_dir = run
  summary = json.load(open(os.path.join(model_dir, "train_summary.json")))
  kept = glob.glob(os.path.join(model_dir, "checkpoints", "epoch", "ckpt-*.index"))
  assert len(kept) == min(2, summary["epochs_run"])
  aucs = summary["eval_auc_per_epoch"]
  # The final weights are the best epoch's (restored from checkpoints/best).
  assert summary["final"]["auc"] == pytest.approx(max(aucs), abs=1e-9)


def test_early_stopping_rule(run):
  model_dir, _ = run
  summary = json.load(open(os.path.join(model_dir, "train_summary.json")))
  aucs = summary["eval_auc_per_epoch"]
  # patience 1: training goes on while every epoch beats the best so far, and stops
  # at the first epoch that does not.
  assert all(b > a for a, b in zip(aucs[:-2], aucs[1:-1]))
  if len(aucs) < 5:
    assert aucs[-1] <= max(aucs[:-1])
  else:
    assert aucs[-1] > aucs[-2]


def test_tensorboard_has_per_distribution_and_code_scalars(run):
  model_dir, _ = run
  summary = json.load(open(os.path.join(model_dir, "train_summary.json")))
  tags = _scalars(os.path.join(model_dir, "logs", "eval", "events.*"))
  assert "eval/auc" in tags and "eval/gauc" in tags
  assert {"eval_scenario/s0/auc", "eval_user_group/g1/auc"} <= set(tags)
  assert "codes/explicit/level_1/perplexity" in tags
  assert "codes/implicit/level_2/dead_share" in tags
  # One value per epoch, equal to the exact AUCs the summary reports.
  for tag in ("eval/auc", "eval_scenario/s0/auc", "codes/explicit/level_1/perplexity",
              "throughput/examples_per_sec"):
    assert len(tags[tag]) == summary["epochs_run"], tag
  np.testing.assert_allclose(tags["eval/auc"], summary["eval_auc_per_epoch"], rtol=1e-6)
  np.testing.assert_allclose(tags["throughput/examples_per_sec"],
                             summary["examples_per_sec_per_epoch"], rtol=1e-5)
  assert all(r > 0 for r in summary["examples_per_sec_per_epoch"])
  assert all(1.0 <= p <= 4.0 for p in tags["codes/explicit/level_1/perplexity"])
  train_tags = _scalars(os.path.join(model_dir, "logs", "train", "events.*"))
  assert [t for t in train_tags if "loss" in t]


def test_cosine_schedule_warms_up_then_decays():
  config = train.TrainConfig(data_dir="", model_dir="", learning_rate=0.1,
                             lr_schedule="cosine", warmup_steps=10)
  schedule = train._learning_rate(config, total_steps=110)
  assert float(schedule(0)) == pytest.approx(0.0, abs=1e-9)
  assert float(schedule(10)) == pytest.approx(0.1, rel=1e-5)
  assert float(schedule(60)) == pytest.approx(0.05, rel=1e-3)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)
  constant = train._learning_rate(train.TrainConfig(data_dir="", model_dir=""), 10)
  assert constant == train.TrainConfig.learning_rate
  with pytest.raises(ValueError, match="lr_schedule"):
    train._learning_rate(train.TrainConfig(data_dir="", model_dir="",
                                           lr_schedule="step"), 10)


def test_evaluate_from_checkpoint_matches_training_summary(run, tmp_path):
  model_dir, data_dir = run
  out = tmp_path / "eval.json"
  # No model flags: the run's recorded config (hmdn_mmoe, 2 levels of 4 codes).
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "evaluate", f"--data_dir={data_dir}",
       f"--model_dir={model_dir}", f"--output={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.load(open(out))
  summary = json.load(open(os.path.join(model_dir, "train_summary.json")))
  assert result["auc"] == pytest.approx(summary["final"]["auc"], abs=1e-6)
  assert "gauc" in result
  level1 = result["codes"]["explicit/level_1"]
  assert sum(v["rows"] for v in level1["per_code"].values()) == result["rows_eval"]


def test_the_console_names_strategy_replicas_and_few_steps(run):
  model_dir, data_dir = run
  lines = CONSOLE["stdout"].splitlines()
  rows = json.load(open(os.path.join(data_dir, "metadata.json")))["rows_written"]["train"]
  steps = rows // 256
  assert (f"training hmdn_mmoe with strategy 'default' on 1 replica (the default "
          f"device): global batch 256 (256 per replica), {steps} steps per epoch x 5 "
          "epochs") in lines, lines
  hint = [l for l in lines if l.startswith(f"note: {steps} training steps per epoch")]
  assert len(hint) == 1 and "--batch_size=256" in hint[0] and "--batch_size=64" in hint[0]
  # An explicit --codebook_warmup_steps is never changed.
  assert not [l for l in lines if "follows the run's length" in l]
  epochs = [l for l in lines if l.startswith("epoch ")]
  history = json.load(open(os.path.join(model_dir, "history.json")))
  assert len(epochs) == len(history)
  for line, entry in zip(epochs, history):  # the epoch line's loss is history's
    assert f"loss {entry['loss']:.4f}" in line


def test_a_short_run_follows_the_default_codebook_warmup_in_one_line(planted_data_dir,
                                                                     tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "train", f"--data_dir={planted_data_dir}",
       f"--model_dir={tmp_path / 'm'}", "--model=hmdn_moe", "--epochs=1",
       "--batch_size=512", "--num_levels=2", "--codebook_size=4"],
      cwd=ROOT, capture_output=True, text=True, timeout=500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.load(open(tmp_path / "m" / "run_config.json"))
  followed = record["model"]["hmdrr"]["quantizer"]["warmup_steps"]
  steps = record["config"]["epochs"] * (json.load(open(os.path.join(
      planted_data_dir, "metadata.json")))["rows_written"]["train"] // 512)
  assert followed == steps // 3 and followed < 100
  notes = [l for l in proc.stdout.splitlines() if "follows the run's length" in l]
  assert notes == [f"note: --codebook_warmup_steps follows the run's length: {followed} "
                   f"steps (the default 100 needs a run of 300 steps or more; this one "
                   f"has {steps}); set the flag to choose"], proc.stdout


def test_an_explicit_codebook_warmup_or_a_long_lr_warmup_is_refused():
  base = train.TrainConfig(data_dir="d", model_dir="m", epochs=2,
                           model=ModelConfig.of(name="hmdn_moe", codebook_warmup_steps=100))
  with pytest.raises(ValueError, match=r"--codebook_warmup_steps=100: the run has only "
                     r"20 training steps \(2 epochs x 10\)"):
    run_length.check_quantizer_starts(base, 10)
  long_lr = train.TrainConfig(data_dir="d", model_dir="m", epochs=2,
                              lr_schedule="cosine", warmup_steps=20)
  with pytest.raises(ValueError, match=r"--warmup_steps=20: the run has only 20 "
                     r"training steps \(2 epochs x 10\), so the learning rate would "
                     "never leave its warm-up"):
    run_length.check_lr_warmup(long_lr, 10)
  run_length.check_lr_warmup(long_lr, 11)  # 22 steps: the warm-up ends inside the run
  with pytest.raises(ValueError, match="--warmup_steps=5: the learning-rate warm-up is "
                     "part of --lr_schedule=cosine"):
    train.TrainConfig(data_dir="d", model_dir="m", warmup_steps=5).validate()


def test_follow_codebook_warmup_keeps_a_run_long_enough_and_baselines():
  lines = []
  hmdn = train.TrainConfig(data_dir="d", model_dir="m", epochs=3,
                           model=ModelConfig(name="hmdn_moe"))
  assert run_length.follow_codebook_warmup(hmdn, 100, log=lines.append) is hmdn
  short = run_length.follow_codebook_warmup(hmdn, 31, log=lambda *a, **k: lines.append(a))
  assert short.model.hmdrr.quantizer.warmup_steps == 31 and len(lines) == 1
  baseline = dataclasses.replace(hmdn, model=ModelConfig(name="moe"))
  assert run_length.follow_codebook_warmup(baseline, 1, log=lines.append) is baseline


class _FakeModel:
  """What the console callbacks read of a model: the optimizer's step count."""

  def __init__(self):
    self.optimizer = type("Optimizer", (), {})()
    self.optimizer.iterations = tf.Variable(0, dtype=tf.int64)
    self.stop_training = False

  def steps(self, n):
    self.optimizer.iterations.assign_add(n)


def test_throughput_leaves_out_the_first_execution(monkeypatch):
  from hmdn.pipeline import callbacks
  clock = iter([0.0, 10.0, 12.0])  # epoch start, after the traced first step, end
  monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
  model = _FakeModel()
  throughput = callbacks.Throughput(global_batch_size=100, steps_per_epoch=5)
  throughput.set_model(model)
  throughput.on_epoch_begin(0)
  model.steps(1)
  throughput.on_train_batch_end(0)
  model.steps(4)
  logs = {}
  throughput.on_epoch_end(0, logs)
  assert logs["examples_per_sec"] == pytest.approx(4 * 100 / 2.0)  # not 500 / 12
  assert logs["step_time_ms"] == pytest.approx(500.0)
  assert logs["train_seconds"] == pytest.approx(12.0)


def test_progress_inside_an_epoch_and_the_resume_line(monkeypatch):
  import io
  from hmdn.pipeline import callbacks
  now = [0.0]
  monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
  model = _FakeModel()
  stream, printed = io.StringIO(), []
  progress = callbacks.ProgressLine(2, print_fn=printed.append, steps_per_epoch=100,
                                    global_batch_size=10, stream=stream, interval=5.0)
  progress.set_model(model)
  progress.on_epoch_begin(0)
  for step in range(1, 41):  # the first step traces (8 s), then a step every 0.25 s
    now[0] += 8.0 if step == 1 else 0.25
    model.steps(1)
    progress.on_train_batch_end(step - 1, {"loss": tf.constant(0.5 + step / 1000)})
  # A line every 5 s, its rate and time left measured after the traced first step.
  assert stream.getvalue().splitlines() == [
      "epoch 1/2  step 2/100  loss 0.5020  40 ex/s  ~24 s left in epoch",
      "epoch 1/2  step 22/100  loss 0.5220  40 ex/s  ~20 s left in epoch"]
  progress.on_epoch_end(0, {"loss": 0.53, "examples_per_sec": 40.0})
  assert printed[0].startswith("epoch 1/2  loss 0.5300  40 ex/s  18 s")

  lines = []
  resume = callbacks.ResumeLine(30, "/runs/m/backup", print_fn=lines.append)
  resume.set_model(model)  # 40 steps restored
  resume.on_train_begin()
  assert lines == ["resuming from /runs/m/backup: epoch 2, step 10 of 30 (40 steps "
                   "done)"]
