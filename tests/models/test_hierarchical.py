"""HierarchicalDistributionRepresentation: views, shapes, gradients, config."""
import numpy as np
import pytest
import tensorflow as tf

from models.hierarchical import HierarchicalDistributionRepresentation


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
  with tf.GradientTape() as tape:
    out = layer(inputs, training=True)
    loss = tf.reduce_sum(out["representation"] ** 2)
  grads = tape.gradient(loss, layer.trainable_variables)
  by_view = {v: 0.0 for v in layer.views}
  for var, g in zip(layer.trainable_variables, grads):
    for view in layer.views:
      if f"{view}_view" in var.name and g is not None:
        by_view[view] += float(tf.reduce_sum(tf.abs(g)))
  assert all(total > 0 for total in by_view.values()), by_view


def test_missing_view_input_is_a_clear_error():
  layer = HierarchicalDistributionRepresentation(extraction="dual")
  with pytest.raises(ValueError, match="implicit"):
    layer({"explicit": _inputs()["explicit"]})


def test_config_round_trip_and_validation():
  layer = HierarchicalDistributionRepresentation(
      extraction="explicit", distribution_dim=7, view_units=(9,), num_levels=5,
      codebook_size=3, shared_codebook=True, codebook_update="loss", decay=0.9,
      beta=0.5, commitment_weight=0.1, seed=4)
  again = HierarchicalDistributionRepresentation.from_config(layer.get_config())
  assert again.get_config() == layer.get_config()
  with pytest.raises(ValueError, match="extraction"):
    HierarchicalDistributionRepresentation(extraction="both")
  with pytest.raises(ValueError, match="distribution_dim"):
    HierarchicalDistributionRepresentation(distribution_dim=0)
