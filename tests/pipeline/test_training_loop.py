"""The training loop's run directory: config and versions, kept checkpoints, best
checkpoint, early stopping, TensorBoard scalars (per distribution, code usage), and
the learning-rate schedule."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.registry import ModelConfig
from hmdn.pipeline import callbacks as callbacks_lib
from hmdn.pipeline import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


class _Evaluation:
  """The part of DistributionEvaluation early stopping reads: the run's history."""

  def __init__(self, history):
    self.history = history


def test_early_stopping_goes_on_counting_after_a_resume():
  """Issue 22.7: the run's epochs before a kill count towards the patience (Keras'
  own EarlyStopping starts from scratch in each process)."""
  history = [{"epoch": 1, "auc": 0.70}, {"epoch": 2, "auc": 0.80},
             {"epoch": 3, "auc": 0.75}]
  stopped = {}
  for name, callback in (
      ("resumable", callbacks_lib.ResumableEarlyStopping(2, _Evaluation(history))),
      ("keras", tf.keras.callbacks.EarlyStopping(monitor="val_exact_auc", mode="max",
                                                 patience=2))):
    model = tf.keras.Sequential()
    model.stop_training = False
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(3)  # resumed at the fourth epoch
    callback.on_epoch_end(3, {"val_exact_auc": 0.79})
    stopped[name] = model.stop_training
  # Two epochs (3 and 4) without beating epoch 2's 0.80: patience 2 is used up.
  assert stopped == {"resumable": True, "keras": False}
  # An epoch recorded after the backup the run resumed from is not counted.
  callback = callbacks_lib.ResumableEarlyStopping(2, _Evaluation(history))
  callback.set_model(tf.keras.Sequential())
  callback.on_train_begin()
  callback.on_epoch_begin(2)
  assert (callback.best, callback.wait, callback.best_epoch) == (0.80, 0, 1)
