"""CTRModel under MirroredStrategy (two logical CPUs): every HMDN variant trains with
its codebooks in sync on both replicas, and one step on two replicas equals one step on
one. A file of its own so `make test`'s workers (pytest-xdist, one file each) share the
model tests evenly."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.models import registry
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import train
from test_ctr_model import SMALL, _as_dataset


@pytest.mark.parametrize("name", [n for n in registry.model_names()
                                  if n.startswith(registry.HMDN_PREFIX)])
def test_hmdn_model_trains_under_mirrored_strategy(name, data_dir, spec, batches,
                                                   mirrored_strategy):
  """Two replicas: loss is finite, and the codebooks stay identical on both.

  (Each backbone alone is run under MirroredStrategy in test_backbones.py.)"""
  with mirrored_strategy.scope():
    model = train.build_model(data_dir, ModelConfig.of(name=name, **SMALL))
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  history = model.fit(_as_dataset(batches[:3]), epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][-1])
  quantizer = model.hierarchy.quantizer  # one, fused over the views
  for variable in (quantizer.codebooks, quantizer.ema_counts):
    replicas = [v.numpy() for v in variable.values]
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])
  assert bool(quantizer.initialized.numpy())  # data-dependent init ran


@pytest.mark.parametrize("name", ["moe", "hmdn_moe"])
def test_one_step_on_two_replicas_equals_one_replica(name, data_dir, batches,
                                                     mirrored_strategy):
  """Same weights, same global batch: one SGD step on the default strategy and on two
  replicas (half the batch each) gives the same loss and the same weights. Fails if
  the loss is divided by the per-replica instead of the global batch (SGD, unlike
  Adam's first step, keeps the gradient's scale)."""
  features, labels = batches[0]
  config = ModelConfig.of(name=name, **dict(SMALL, codebook_warmup_steps=0))
  tf.keras.utils.set_random_seed(0)
  single = train.build_model(data_dir, config)
  single(features)
  start = single.get_weights()
  with mirrored_strategy.scope():
    mirrored = train.build_model(data_dir, config)
    mirrored(features)
    mirrored.compile(optimizer=tf.keras.optimizers.SGD(0.5))
  mirrored.set_weights(start)
  single.compile(optimizer=tf.keras.optimizers.SGD(0.5))
  one_batch = tf.data.Dataset.from_tensors((features, labels))
  loss_single = single.fit(one_batch, epochs=1, verbose=0).history["loss"][0]
  loss_mirrored = mirrored.fit(one_batch, epochs=1, verbose=0).history["loss"][0]
  np.testing.assert_allclose(loss_mirrored, loss_single, rtol=1e-4)
  moved = 0.0
  for before, a, b in zip(start, single.get_weights(), mirrored.get_weights()):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
    if a.dtype.kind == "f":
      moved = max(moved, float(np.abs(a - before).max()))
  assert moved > 1e-3  # the step did move the weights
