"""The per-domain backbones' own-branch path equals computing every branch.

With many domains MMoE, PLE and STAR run only each example's own domain's branch
(weights gathered per example); with few they compute all and keep one. Both paths
must give the same outputs and gradients, and neither may let a batch's other
examples change a prediction.
"""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.backbones import MMoE, PLE, STAR, base
from hmdn.models.backbones.star import StarDense
from hmdn.models.mlp import gathered_matmul

# The classes whose threshold decides the path (STAR's lives in its StarDense layers).
THRESHOLDS = (MMoE, PLE, StarDense)

DOMAINS = 12
CASES = {
    "mmoe": lambda: MMoE(DOMAINS, output_dim=8, num_experts=3, expert_units=(16,),
                         gate_units=(8,), tower_units=(8,)),
    "ple_1_level": lambda: PLE(DOMAINS, output_dim=8, num_levels=1, expert_units=(16,),
                               num_specific_experts=2, tower_units=(8,)),
    "ple_3_levels": lambda: PLE(DOMAINS, output_dim=8, num_levels=3, expert_units=(16,),
                                num_specific_experts=2, gate_units=(8,)),
    "star": lambda: STAR(DOMAINS, output_dim=8, units=(16,), aux_units=(8,)),
}


def _inputs(batch=40, seed=0):
  rng = np.random.default_rng(seed)
  return {"features": tf.constant(rng.normal(size=(batch, 10)), tf.float32),
          "condition": tf.constant(rng.normal(size=(batch, 6)), tf.float32),
          "domain": tf.constant(rng.integers(0, DOMAINS, batch), tf.int32)}


def _set_threshold(monkeypatch, from_domains):
  for cls in THRESHOLDS:
    monkeypatch.setattr(cls, "own_branch_from_domains", from_domains)


def _output_and_gradients(layer, inputs):
  with tf.GradientTape() as tape:
    out = layer(inputs, training=False)
    loss = tf.reduce_sum(out * tf.range(1.0, out.shape[-1] + 1.0))
  grads = tape.gradient(loss, layer.trainable_variables)
  return out.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("name", sorted(CASES))
def test_own_branch_equals_every_branch(name, monkeypatch):
  tf.keras.utils.set_random_seed(3)
  layer, inputs = CASES[name](), _inputs()
  _set_threshold(monkeypatch, 10 ** 9)  # compute every branch
  every, every_grads = _output_and_gradients(layer, inputs)
  _set_threshold(monkeypatch, 1)  # the own branch only
  own, own_grads = _output_and_gradients(layer, inputs)
  np.testing.assert_allclose(own, every, rtol=1e-5, atol=1e-5)
  assert len(own_grads) == len(every_grads)
  for g_own, g_every, v in zip(own_grads, every_grads, layer.trainable_variables):
    np.testing.assert_allclose(g_own, g_every, rtol=1e-4, atol=1e-5, err_msg=v.name)
  # The gradients compared above are not all zero (they could not then differ).
  assert any(np.abs(g).sum() > 0 for g in own_grads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_own_branch_prediction_does_not_depend_on_the_batch(name, monkeypatch):
  _set_threshold(monkeypatch, 1)
  tf.keras.utils.set_random_seed(4)
  layer, inputs = CASES[name](), _inputs(batch=32, seed=1)
  batch = layer(inputs, training=False).numpy()
  for row in (0, 7, 31):
    alone = layer({k: v[row:row + 1] for k, v in inputs.items()}, training=False)
    np.testing.assert_allclose(alone.numpy()[0], batch[row], rtol=1e-5, atol=1e-6)


def test_the_paths_switch_at_each_layers_threshold():
  for cls in THRESHOLDS:
    n = cls.own_branch_from_domains
    assert n > 1
    assert not base.runs_own_branch_only(n - 1, n) and base.runs_own_branch_only(n, n)


@pytest.mark.parametrize("members", [1, 3])
def test_gathered_matmul_equals_the_gathered_einsum_and_its_gradient(members):
  """The hand-written gradient of `gathered_matmul` equals TensorFlow's of the plain
  formula; a block no example selected gets a zero gradient."""
  rng = np.random.default_rng(members)
  blocks, batch, fan_in, fan_out = 5, 9, 4, 3
  x = tf.constant(rng.normal(size=(batch, members, fan_in)), tf.float32)
  kernels = tf.constant(rng.normal(size=(blocks, members, fan_in, fan_out)), tf.float32)
  select = tf.constant([0, 2, 2, 4, 0, 0, 2, 4, 4], tf.int32)  # block 1 and 3 unused
  weight = tf.constant(rng.normal(size=(batch, members, fan_out)), tf.float32)

  def loss_and_grads(fn):
    with tf.GradientTape() as tape:
      tape.watch([x, kernels])
      y = fn(x, kernels)
      loss = tf.reduce_sum(y * weight)
    return (y.numpy(),) + tuple(tf.convert_to_tensor(g).numpy()
                                for g in tape.gradient(loss, [x, kernels]))

  got = loss_and_grads(lambda a, k: gathered_matmul(a, k, select))
  want = loss_and_grads(lambda a, k: tf.einsum("bmi,bmio->bmo", a, tf.gather(k, select)))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  assert np.all(got[2][[1, 3]] == 0) and np.abs(got[2][[0, 2, 4]]).sum() > 0
