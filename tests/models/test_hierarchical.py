"""HierarchicalDistributionRepresentation: views, shapes, gradients, config."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.hierarchical import HierarchicalDistributionRepresentation, HMDRRConfig
from hmdn.models.quantizer import QuantizerConfig


def _inputs(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"explicit": tf.constant(rng.normal(size=(n, 6)), tf.float32),
          "implicit": tf.constant(rng.normal(size=(n, 20)), tf.float32)}


@pytest.mark.parametrize("extraction,views", [("explicit", 1), ("implicit", 1),
                                              ("dual", 2)])
def test_shapes_per_extraction(extraction, views):
  layer = HierarchicalDistributionRepresentation(
      extraction=extraction, distribution_dim=5, num_levels=3, codebook_size=4)
  out = layer(_inputs(), training=True)
  assert out["representation"].shape == (32, 5 * views)
  assert out["codes"].shape == (32, 3 * views)
  assert out["codes"].dtype == tf.int32
  for view in layer.views:
    assert out[f"partial_sums_{view}"].shape == (32, 3, 5)
    np.testing.assert_array_equal(out[f"codes_{view}"].numpy(),
                                  out["codes"].numpy()[:, :3] if view == layer.views[0]
                                  else out["codes"].numpy()[:, 3:])


def test_gradients_reach_both_view_mlps_through_the_quantizers():
  layer = HierarchicalDistributionRepresentation(distribution_dim=4, num_levels=2,
                                                 codebook_size=4)
  inputs = _inputs()
  layer(inputs, training=True)  # data-dependent initialisation
  with tf.GradientTape(persistent=True) as tape:
    out = layer(inputs, training=True)
    loss = tf.reduce_sum(out["representation"] ** 2)
  for view in range(len(layer.views)):  # each view's own first-layer kernel
    kernel, _ = layer.encoders.view_weights(0, view)
    assert np.abs(tape.gradient(loss, kernel).numpy()).sum() > 0, layer.views[view]


def test_implicit_view_reads_its_input_through_a_stop_gradient():
  layer = HierarchicalDistributionRepresentation(distribution_dim=4, num_levels=2,
                                                 codebook_size=4)
  inputs = _inputs()
  layer(inputs, training=True)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(list(inputs.values()))
    out = layer(inputs, training=True)
    loss = tf.reduce_sum(out["representation"] ** 2) + tf.add_n(layer.losses)
  assert tape.gradient(loss, inputs["implicit"]) is None
  assert np.abs(tape.gradient(loss, inputs["explicit"]).numpy()).max() > 0


def test_encoder_output_is_each_views_own_mlp():
  layer = HierarchicalDistributionRepresentation(distribution_dim=5, view_units=(7,),
                                                 num_levels=2, codebook_size=4)
  inputs = _inputs()
  fused = layer.encode(inputs).numpy()
  for v, view in enumerate(layer.views):
    k0, b0 = layer.encoders.view_weights(0, v)
    k1, b1 = layer.encoders.view_weights(1, v)
    hidden = np.maximum(inputs[view].numpy() @ k0.numpy() + b0.numpy(), 0)
    np.testing.assert_allclose(fused[:, v], hidden @ k1.numpy() + b1.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_diagnostics_per_view():
  layer = HierarchicalDistributionRepresentation(distribution_dim=4, num_levels=3,
                                                 codebook_size=4)
  layer(_inputs(256), training=True)
  report = layer.diagnostics(_inputs(64, seed=1))
  assert sorted(report) == ["explicit", "implicit"]
  for view in report.values():
    assert view["perplexity"].shape == (3,)
    assert np.all((view["perplexity"] >= 1) & (view["perplexity"] <= 4))
    assert np.all(view["residual_ratio"] >= 0)


def test_missing_view_input_is_a_clear_error():
  layer = HierarchicalDistributionRepresentation(extraction="dual")
  with pytest.raises(ValueError, match="implicit"):
    layer({"explicit": _inputs()["explicit"]})


def test_config_round_trip_and_validation():
  layer = HierarchicalDistributionRepresentation(
      extraction="explicit", distribution_dim=7, view_units=(9,), num_levels=5,
      codebook_size=3, shared_codebook=True, codebook_update="loss", decay=0.9,
      beta=0.5, commitment_weight=0.1, warmup_steps=2, kmeans_iterations=1,
      restart_after_steps=9, buffer_size=32, implicit_stop_gradient=False, seed=4)
  again = HierarchicalDistributionRepresentation.from_config(layer.get_config())
  assert again.get_config() == layer.get_config()
  assert layer.get_config()["buffer_size"] == 32
  # Registered for Keras deserialization under the "hmdn" package.
  restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert restored.get_config() == layer.get_config()
  with pytest.raises(ValueError, match="extraction"):
    HierarchicalDistributionRepresentation(extraction="both")
  with pytest.raises(ValueError, match="distribution_dim"):
    HierarchicalDistributionRepresentation(distribution_dim=0)


def test_a_layer_config_saved_before_the_nested_options_still_loads():
  """A Keras config of the HMDRR layer as older versions saved it: flat keyword
  arguments, the warm-up under `warmup_steps`, view_units a list."""
  old = {"name": "hierarchy", "trainable": True, "dtype": "float32",
         "extraction": "dual", "distribution_dim": 6, "view_units": [8],
         "num_levels": 3, "codebook_size": 5, "shared_codebook": False,
         "codebook_update": "ema", "decay": 0.95, "beta": 0.25,
         "commitment_weight": 1.0, "warmup_steps": 7, "kmeans_iterations": 2,
         "restart_after_steps": 50, "buffer_size": 64,
         "implicit_stop_gradient": True, "seed": 11}
  layer = HierarchicalDistributionRepresentation.from_config(old)
  assert layer.config == HMDRRConfig(
      extraction="dual", distribution_dim=6, view_units=(8,), quantizer=QuantizerConfig(
          num_levels=3, codebook_size=5, decay=0.95, warmup_steps=7,
          kmeans_iterations=2, restart_after_steps=50, buffer_size=64))
  assert layer.quantizer.config is layer.config.quantizer  # passed whole, not copied
  assert layer.quantizer.seed == 11 and layer.num_levels == 3
  assert {k: layer.get_config()[k] for k in old} == dict(old, view_units=(8,))


def test_the_nested_config_and_keyword_options_are_one_set_of_options():
  config = HMDRRConfig(distribution_dim=4, quantizer=QuantizerConfig(num_levels=2))
  layer = HierarchicalDistributionRepresentation(config, codebook_size=3)
  assert layer.config.quantizer.num_levels == 2 and layer.config.quantizer.codebook_size == 3
  assert config.quantizer.codebook_size == 8  # the caller's config is not altered
  with pytest.raises(ValueError, match=r"--codebook_warmup_steps=-1: expected an "
                     r"integer >= 0"):
    HierarchicalDistributionRepresentation(warmup_steps=-1)
  with pytest.raises(ValueError, match=r"--buffer_size=2: expected an integer >= "
                     r"--codebook_size \(3\)"):
    HierarchicalDistributionRepresentation(codebook_size=3, buffer_size=2)
  with pytest.raises(TypeError):  # a misspelt option is not swallowed
    HierarchicalDistributionRepresentation(num_level=2)


def test_without_quantization_s_d_is_the_views_continuous_vectors():
  """The ablation that removes the quantizer: s_D is the encoders' output, no codes,
  no quantization loss, no quantizer weights."""
  layer = HierarchicalDistributionRepresentation(quantize=False, distribution_dim=4)
  inputs = _inputs()
  out = layer(inputs, training=True)
  assert not any(k.startswith("codes") for k in out)
  encoded = layer.encode(inputs).numpy()
  np.testing.assert_array_equal(out["representation"].numpy(), encoded.reshape(32, 8))
  np.testing.assert_array_equal(out["representation_implicit"].numpy(), encoded[:, 1])
  assert layer.losses == [] and layer.quantizer is None
  assert not any("quantizer" in w.name for w in layer.weights)
  assert layer.diagnostics(inputs) == {}
  again = HierarchicalDistributionRepresentation.from_config(layer.get_config())
  assert again.config.quantize is False
