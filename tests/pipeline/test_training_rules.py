"""The training loop's rules where they fire: early stopping stops at the exact epoch
its patience says (a tie is no improvement, a better epoch restarts the count), and the
final weights are the best epoch's (a tie does not replace them).

The exact evaluation is replaced by a scripted sequence of AUCs, so the rules see the
figures the test chose; the training itself is real (two steps an epoch of a small
model on the suite's planted data)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.run_directory import RunDirectory
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import callbacks as callbacks_lib
from hmdn.pipeline import evaluate, train

# Epoch 2 is the best so far, epoch 4 beats it (the count restarts), epochs 5 and 6 do
# not (6 ties): patience 2 stops after epoch 6, before the better epochs 7 and 8.
AUCS = [0.60, 0.70, 0.65, 0.71, 0.70, 0.71, 0.90, 0.95]
PATIENCE, STOP_EPOCH, BEST_EPOCH = 2, 6, 4


class Killed(Exception):
  """The process dies at the start of an epoch (its predecessor's backup is written)."""


def _scripted_train(data_dir, model_dir, kill_before_epoch=None):
  """Trains with the scripted AUCs; returns (model or None if killed, printed lines).
  `kill_before_epoch` (1-based): the first process dies as that epoch begins and a
  second one resumes the run."""
  calls = []

  def scripted(predict, data_dir, codebook_size=None, code_views=None, *args, **kwargs):
    auc = AUCS[len(calls)] if len(calls) < len(AUCS) else 0.5  # then the final weights
    calls.append(auc)
    return {"auc": auc, "logloss": 0.5, "per_distribution": {}, "rows_eval": 1}

  begin = callbacks_lib.ProgressLine.on_epoch_begin

  def kill(self, epoch, logs=None):
    if epoch + 1 == kill_before_epoch:
      raise Killed(f"killed before epoch {epoch + 1}")
    begin(self, epoch, logs)

  lines = []
  config = train.TrainConfig(
      data_dir=data_dir, model_dir=model_dir, model=ModelConfig(name="dnn", output_dim=8),
      epochs=len(AUCS), steps_per_epoch=2, batch_size=256,
      early_stopping_patience=PATIENCE, keep_checkpoints=len(AUCS))
  with pytest.MonkeyPatch.context() as m:
    m.setattr(evaluate, "run", scripted)
    m.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    if kill_before_epoch:
      with m.context() as dying:
        dying.setattr(callbacks_lib.ProgressLine, "on_epoch_begin", kill)
        with pytest.raises(Killed):
          train.train(config)
      assert len(calls) == kill_before_epoch - 1
    model = train.train(config)
  return model, lines


@pytest.fixture(scope="module")
def scripted_run(planted_data_dir, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("rules") / "model")
  model, lines = _scripted_train(planted_data_dir, model_dir)
  return model, RunDirectory(model_dir), lines


def test_early_stopping_stops_at_the_epoch_its_patience_says(scripted_run):
  _, run, lines = scripted_run
  summary = json.load(open(run.summary_path))
  assert summary["epochs_run"] == STOP_EPOCH
  assert summary["eval_auc_per_epoch"] == AUCS[:STOP_EPOCH]
  epoch_lines = [line for line in lines if line.startswith("epoch ")]
  assert len(epoch_lines) == STOP_EPOCH, lines
  assert epoch_lines[-1].startswith(f"epoch {STOP_EPOCH}/{len(AUCS)}")
  assert epoch_lines[-1].endswith("early stop")
  assert not any("early stop" in line for line in epoch_lines[:-1])


def test_the_final_weights_are_the_best_epochs(scripted_run, planted_data_dir):
  model, run, _ = scripted_run
  assert json.load(open(run.summary_path))["best_epoch"] == BEST_EPOCH
  restored = {}
  for epoch in (BEST_EPOCH, STOP_EPOCH):
    clone = train.build_model(planted_data_dir, ModelConfig(name="dnn", output_dim=8))
    tf.train.Checkpoint(model=clone).restore(
        os.path.join(run.epoch_checkpoints_dir, f"ckpt-{epoch}")).expect_partial()
    restored[epoch] = clone.get_weights()
  final = model.get_weights()
  # Epochs 4 and 6 trained different weights; the final ones are epoch 4's.
  assert any(not np.array_equal(a, b) for a, b in
             zip(restored[BEST_EPOCH], restored[STOP_EPOCH]))
  for got, want in zip(final, restored[BEST_EPOCH]):
    np.testing.assert_array_equal(got, want)



def test_early_stopping_counts_the_epochs_before_a_kill(planted_data_dir, tmp_path):
  """Killed as epoch 6 begins, the resumed run still stops after epoch 6: its count
  includes epochs 5 (worse) and 4 (the best) of the first process."""
  model_dir = str(tmp_path / "model")
  _, lines = _scripted_train(planted_data_dir, model_dir, kill_before_epoch=STOP_EPOCH)
  summary = json.load(open(RunDirectory(model_dir).summary_path))
  assert summary["eval_auc_per_epoch"] == AUCS[:STOP_EPOCH]
  assert summary["best_epoch"] == BEST_EPOCH
  epoch_lines = [line for line in lines if line.startswith("epoch ")]
  assert epoch_lines[-1].startswith(f"epoch {STOP_EPOCH}/{len(AUCS)}")
  assert epoch_lines[-1].endswith("early stop")
