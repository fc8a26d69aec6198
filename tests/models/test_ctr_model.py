"""Every registered model, wired by CTRModel from a real preprocessing output:
builds from config, trains with falling loss, is batch independent at inference, and
round-trips through the exported SavedModel (with codes for HMDN models)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from features import spec as spec_lib
from models import registry
from models.registry import ModelConfig
from pipeline import data, evaluate, export, metrics, train

SMALL = dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
             codebook_size=4)


@pytest.fixture(scope="module")
def data_dir(planted_data_dir):
  return planted_data_dir


@pytest.fixture(scope="module")
def spec(data_dir):
  return spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))


@pytest.fixture(scope="module")
def batches(data_dir, spec):
  ds = data.make_dataset(data_dir, "train", spec, 256, training=True, seed=0)
  return list(ds.take(40))


def test_registry_has_every_backbone_and_hmdn_variant():
  names = registry.model_names()
  for required in ("dnn", "moe", "mmoe", "ple", "hinet", "star", "apg", "epnet",
                   "hmdn_moe", "hmdn_mmoe", "hmdn_ple", "hmdn_hinet", "hmdn_apg",
                   "hmdn_epnet"):
    assert required in names


@pytest.mark.parametrize("bad,option", [
    (dict(name="nope"), "unknown model"),
    (dict(name="hmdn_moe", codebook_size=1), "codebook_size"),
    (dict(name="hmdn_moe", num_levels=0), "num_levels"),
    (dict(name="hmdn_moe", extraction="both"), "extraction"),
    (dict(name="moe", hmdn_condition="x"), "hmdn_condition"),
])
def test_invalid_model_config_names_the_option(data_dir, bad, option):
  with pytest.raises(ValueError, match=option):
    train.build_model(data_dir, ModelConfig(**bad))


def test_explicit_view_needs_a_distribution_field(tmp_path, data_dir):
  spec = spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))
  import dataclasses
  plain = spec_lib.FeatureSpec(
      name="plain", source="plain.yaml",
      features=tuple(dataclasses.replace(f, distribution_level=None)
                     for f in spec.features))
  from models.ctr_model import CTRModel
  with pytest.raises(ValueError, match="distribution field"):
    CTRModel(plain, os.path.join(data_dir, "vocab"), {},
             ModelConfig(name="hmdn_apg", extraction="explicit"))


def _as_dataset(batches):
  return tf.data.Dataset.from_generator(
      lambda: iter(batches),
      output_signature=tf.data.Dataset.from_tensors(batches[0]).element_spec)


def _predict(model, spec, serialized):
  return evaluate.model_predictor(model, spec)(tf.constant(serialized))


@pytest.mark.parametrize("name", registry.model_names())
def test_model_trains_is_batch_independent_and_exports(name, data_dir, spec, batches,
                                                       tmp_path):
  tf.keras.utils.set_random_seed(0)
  model = train.build_model(data_dir, ModelConfig(name=name, **SMALL))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  first = model.evaluate(batches[0][0], batches[0][1], verbose=0, return_dict=True)
  history = model.fit(_as_dataset(batches), epochs=1, verbose=0)
  last = model.evaluate(batches[0][0], batches[0][1], verbose=0, return_dict=True)
  assert last["loss"] < first["loss"] * 0.95, (first, last, history.history)

  rows = [r.numpy() for r in tf.data.TFRecordDataset(
      data.files_of(data_dir, "eval"), compression_type="GZIP").take(16)]
  together = _predict(model, spec, rows)
  alone = [_predict(model, spec, [r]) for r in rows[:4]]
  for i, single in enumerate(alone):
    np.testing.assert_allclose(single["probability"][0], together["probability"][i],
                               atol=1e-6)
    if "codes" in together:
      np.testing.assert_array_equal(single["codes"][0], together["codes"][i])

  export_dir = export.export(model, spec, str(tmp_path / "export"))
  loaded = tf.saved_model.load(export_dir)
  out = loaded.signatures["serving_default"](examples=tf.constant(rows))
  np.testing.assert_allclose(out["probability"].numpy(),
                             together["probability"].numpy(), atol=1e-5)
  if name.startswith("hmdn_"):
    codes = out["codes"].numpy()
    assert codes.shape == (16, 2 * SMALL["num_levels"])  # dual view: 2 x levels
    assert codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < SMALL["codebook_size"]
    np.testing.assert_array_equal(codes, together["codes"].numpy())
  else:
    assert "codes" not in out


def test_explicit_codes_carry_the_planted_coarse_group(data_dir, spec, batches):
  """Level-1 explicit codes vs the planted scenario: NMI far above random codes."""
  tf.keras.utils.set_random_seed(0)
  model = train.build_model(data_dir, ModelConfig(
      name="hmdn_moe", extraction="explicit", num_levels=2, codebook_size=8, seed=0))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  model.fit(_as_dataset(batches), epochs=2, verbose=0)
  columns = evaluate.collect(evaluate.model_predictor(model, spec), data_dir, spec)
  level1 = columns["codes"][:, 0]
  nmi = metrics.normalized_mutual_information(level1, columns["scenario"])
  rng = np.random.default_rng(0)
  random_nmi = max(metrics.normalized_mutual_information(
      rng.integers(0, 8, len(level1)), columns["scenario"]) for _ in range(5))
  assert nmi > 0.3 and nmi > 10 * random_nmi, (nmi, random_nmi)


@pytest.mark.parametrize("name", [n for n in registry.model_names()
                                  if n.startswith(registry.HMDN_PREFIX)])
def test_hmdn_model_trains_under_mirrored_strategy(name, data_dir, spec, batches,
                                                   mirrored_strategy):
  """Two replicas: loss is finite, and the codebooks stay identical on both.

  (Each backbone alone is run under MirroredStrategy in test_backbones.py.)"""
  with mirrored_strategy.scope():
    model = train.build_model(data_dir, ModelConfig(name=name, **SMALL))
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  history = model.fit(_as_dataset(batches[:3]), epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][-1])
  for view in model.hierarchy.views:
    quantizer = model.hierarchy.quantizer(view)
    for variable in (quantizer.codebooks, quantizer.ema_counts):
      replicas = [v.numpy() for v in variable.values]
      assert len(replicas) == 2
      np.testing.assert_array_equal(replicas[0], replicas[1])
    assert bool(quantizer.initialized.numpy())  # data-dependent init ran
