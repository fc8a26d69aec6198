"""--optimizer: LazyAdam's sparse rows against Adam's formula, dense weights as Adam,
the trainer's choice and its hint for large tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.run_directory import RunDirectory
from hmdn.pipeline import optimizers, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LR, B1, B2, EPS = 0.1, 0.9, 0.999, 1e-7


def _lookup_steps(optimizer, table, steps):
  """Applies one gradient per step: d(sum(lookup(ids) * weights))/d table."""
  for ids, weights in steps:
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.nn.embedding_lookup(table, ids) * weights)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)
    optimizer.apply_gradients([(gradient, table)])


def _lazy_reference(table, steps):
  """LazyAdam in numpy: only the rows of a step's (summed) gradient move."""
  table, m, v = table.copy(), np.zeros_like(table), np.zeros_like(table)
  for t, (ids, weights) in enumerate(steps, start=1):
    grad = {}
    for i, w in zip(ids, weights):
      grad[i] = grad.get(i, 0.0) + np.asarray(w, np.float64)
    alpha = LR * np.sqrt(1 - B2 ** t) / (1 - B1 ** t)
    for i, g in grad.items():
      m[i] = B1 * m[i] + (1 - B1) * g
      v[i] = B2 * v[i] + (1 - B2) * g * g
      table[i] -= alpha * m[i] / (np.sqrt(v[i]) + EPS)
  return table


def test_lazy_adam_moves_only_the_looked_up_rows_by_adams_formula():
  start = np.random.default_rng(0).normal(size=(6, 2))
  steps = [([0, 2, 2], [[1.0, -2.0], [0.5, 0.5], [0.25, 1.0]]),  # row 2 twice: summed
           ([2, 3], [[-1.0, 3.0], [2.0, 0.0]]),
           ([3], [[0.5, -0.5]])]
  lazy = tf.Variable(start, dtype=tf.float64)
  _lookup_steps(optimizers.LazyAdam(LR), lazy, steps)
  np.testing.assert_allclose(lazy.numpy(), _lazy_reference(start, steps), rtol=1e-6)
  np.testing.assert_array_equal(lazy.numpy()[[1, 4, 5]], start[[1, 4, 5]])
  # Adam keeps moving row 0 after step 1 (its momentum decays but is not zero):
  # the difference LazyAdam exists for.
  adam = tf.Variable(start, dtype=tf.float64)
  _lookup_steps(tf.keras.optimizers.Adam(LR), adam, steps)
  assert not np.allclose(adam.numpy()[0], lazy.numpy()[0])
  np.testing.assert_allclose(adam.numpy()[[1, 4, 5]], start[[1, 4, 5]])


def test_lazy_adam_is_adam_on_dense_weights():
  start = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  results = []
  for optimizer in (optimizers.LazyAdam(LR), tf.keras.optimizers.Adam(LR)):
    weight = tf.Variable(start)
    for step in range(3):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(weight * (step + 1)))
      optimizer.apply_gradients([(tape.gradient(loss, weight), weight)])
    results.append(weight.numpy())
  np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_unknown_optimizer_names_the_flag_and_value():
  with pytest.raises(ValueError, match=r"--optimizer='sgd'.*adam"):
    train.TrainConfig(data_dir="d", model_dir="m", optimizer="sgd").validate()
  with pytest.raises(ValueError, match="amsgrad"):
    optimizers.LazyAdam(amsgrad=True)


def _train(data_dir, model_dir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "train", f"--data_dir={data_dir}",
       f"--model_dir={model_dir}", "--model=hmdn_moe", "--epochs=1",
       "--steps_per_epoch=20", "--batch_size=128", "--codebook_warmup_steps=5",
       *flags], cwd=ROOT, capture_output=True, text=True, timeout=400)


def test_train_with_lazy_adam_and_the_hint_for_large_tables(planted_data_dir, tmp_path,
                                                             monkeypatch):
  proc = _train(planted_data_dir, tmp_path / "lazy", "--optimizer=lazy_adam")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "note: embedding table" not in proc.stdout
  with open(RunDirectory(str(tmp_path / "lazy")).config_path) as f:
    assert json.load(f)["config"]["optimizer"] == "lazy_adam"
  # The planted tables are small: with the threshold at 1 row, Adam gets the hint.
  monkeypatch.setattr(train, "LAZY_ADAM_HINT_ROWS", 1)
  printed = []
  monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(
      str(x) for x in a)))
  train.train(train.TrainConfig(
      data_dir=planted_data_dir, model_dir=str(tmp_path / "adam"), epochs=1,
      steps_per_epoch=5, batch_size=128))
  hints = [p for p in printed if p.startswith("note: embedding table")]
  assert len(hints) == 1 and "--optimizer=lazy_adam" in hints[0], printed


def test_lazy_adam_under_mirrored_strategy_sums_the_replicas_rows(mirrored_strategy):
  """Two replicas looking up different rows: the all-reduced sparse gradient updates
  the union of their rows, like one step on both replicas' lookups."""
  strategy = mirrored_strategy  # the session's one (see tests/conftest.py)
  start = np.random.default_rng(2).normal(size=(5, 2))
  per_replica = [([0, 2], [[1.0, -1.0], [0.5, 2.0]]), ([2, 3], [[-3.0, 1.0], [1.0, 1.0]])]
  with strategy.scope():
    table = tf.Variable(start, dtype=tf.float64)
    optimizer = optimizers.LazyAdam(LR)

  def inputs(context):
    ids, weights = per_replica[context.replica_id_in_sync_group]
    return tf.constant(ids), tf.constant(weights, tf.float64)

  @tf.function
  def step(values):
    def replica_step(ids, weights):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.embedding_lookup(table, ids) * weights)
      optimizer.apply_gradients([(tape.gradient(loss, table), table)])
    strategy.run(replica_step, args=values)

  step(strategy.experimental_distribute_values_from_function(inputs))
  together = ([0, 2, 2, 3], per_replica[0][1] + per_replica[1][1])
  np.testing.assert_allclose(table.numpy(), _lazy_reference(start, [together]),
                             rtol=1e-6)
