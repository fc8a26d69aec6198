"""Sequence pooling: DIN target attention and the masked mean."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.models.attention import MaskedMeanPooling, TargetAttention

D = 6


def _batch(lengths, max_length, seed=0):
  rng = np.random.default_rng(seed)
  b = len(lengths)
  keys = rng.normal(size=(b, max_length, D)).astype("float32")
  mask = np.arange(max_length)[None, :] < np.array(lengths)[:, None]
  keys[~mask] = rng.normal(size=keys[~mask].shape) * 100  # padding is garbage
  return {"query": tf.constant(rng.normal(size=(b, D)), tf.float32),
          "keys": tf.constant(keys), "mask": tf.constant(mask)}


def _layers():
  return [TargetAttention(units=(8, 4), normalization="softmax"),
          TargetAttention(units=(8, 4), normalization="none"), MaskedMeanPooling()]


@pytest.mark.parametrize("index", range(3))
def test_padding_length_and_companions_never_change_a_row(index):
  tf.keras.utils.set_random_seed(0)
  layer = _layers()[index]
  lengths = [3, 0, 7, 1, 5]
  wide = _batch(lengths, max_length=7)
  out = layer(wide).numpy()
  for row, n in enumerate(lengths):
    for max_length in sorted({max(n, 1), 7, 12}):
      alone = _batch([n], max_length, seed=row + 10)
      alone["query"] = wide["query"][row:row + 1]
      keys = alone["keys"].numpy()
      keys[0, :n] = wide["keys"].numpy()[row, :n]
      alone["keys"] = tf.constant(keys)
      np.testing.assert_allclose(layer(alone).numpy()[0], out[row], rtol=1e-5, atol=1e-5,
                                 err_msg=f"row {row}, padded to {max_length}")


def test_an_empty_history_pools_to_zeros():
  for layer in _layers():
    out = layer(_batch([0, 0], max_length=4)).numpy()
    np.testing.assert_array_equal(out, np.zeros_like(out))


def test_softmax_weights_are_a_distribution_over_real_positions_and_none_are_not():
  tf.keras.utils.set_random_seed(1)
  inputs = _batch([2, 5], max_length=5)
  mask = inputs["mask"].numpy()
  _, w = TargetAttention(units=(8,), normalization="softmax")(inputs, return_weights=True)
  w = w.numpy()
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert (w[~mask] == 0).all()
  _, w_none = TargetAttention(units=(8,), normalization="none")(inputs,
                                                                 return_weights=True)
  assert (w_none.numpy()[~mask] == 0).all()
  assert not np.allclose(w_none.numpy().sum(-1), 1.0)


def test_attention_depends_on_the_candidate_and_the_mean_does_not():
  tf.keras.utils.set_random_seed(2)
  inputs = _batch([4, 4], max_length=4)
  other = dict(inputs, query=inputs["query"] * -3.0)
  att = TargetAttention(units=(8,))
  assert not np.allclose(att(inputs).numpy(), att(other).numpy())
  mean = MaskedMeanPooling()
  np.testing.assert_allclose(mean(inputs).numpy(), mean(other).numpy())
  expected = inputs["keys"].numpy().mean(1)
  np.testing.assert_allclose(mean(inputs).numpy(), expected, rtol=1e-5)


def test_the_layers_serialize_and_a_bad_normalization_is_refused():
  layer = TargetAttention(units=(8, 4), activation="relu", normalization="none")
  clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert clone.get_config()["normalization"] == "none"
  assert clone.get_config()["units"] == [8, 4]
  with pytest.raises(ValueError, match="normalization.*'mean'"):
    TargetAttention(normalization="mean")


@pytest.mark.parametrize("units", [(8,), (8, 4)])
def test_the_unit_is_the_mlp_of_the_four_way_concat(units):
  """The first layer is computed per example; it equals the Dense of [q, k, q-k, q*k]."""
  tf.keras.utils.set_random_seed(3)
  inputs = _batch([3, 5], max_length=5)
  layer = TargetAttention(units=units, normalization="none")
  _, weights = layer(inputs, return_weights=True)
  q = np.broadcast_to(inputs["query"].numpy()[:, None], inputs["keys"].shape)
  k = inputs["keys"].numpy()
  x = np.concatenate([q, k, q - k, q * k], -1)
  params = [w.numpy() for w in layer.weights]  # kernel, bias of each layer in order
  for i in range(0, len(params), 2):
    x = x @ params[i] + params[i + 1]
    if i + 2 < len(params):
      x = 0.5 * (1.0 + np.tanh(x / 2.0))  # sigmoid
  expected = x[..., 0] * inputs["mask"].numpy()
  np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-4, atol=1e-4)
