"""FeatureEmbeddings: each kind of field, OOV, masking, standardization, config."""
import os
import tempfile

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.models import embedding
from hmdn.models.embedding import FeatureEmbeddings

SPEC = {"name": "t", "features": [
    {"name": "y", "kind": "numeric", "role": "label"},
    {"name": "page", "kind": "categorical", "embedding_dim": 3},
    {"name": "uid", "kind": "categorical", "hash_buckets": 10, "embedding_dim": 2},
    {"name": "tags", "kind": "multi_categorical", "embedding_dim": 4},
    {"name": "price", "kind": "numeric", "embedding_dim": 2},
    {"name": "hour", "kind": "numeric", "boundaries": [6, 12, 18], "embedding_dim": 2},
]}


@pytest.fixture()
def layer(tmp_path):
  (tmp_path / "page.txt").write_text("home\nsearch\n")
  (tmp_path / "tags.txt").write_text("a\nb\nc\n")
  return FeatureEmbeddings(SPEC, str(tmp_path),
                           {"price": {"mean": 10.0, "std": 2.0, "count": 5}})


def _batch(**overrides):
  batch = {"page": tf.constant(["home", "search", "unknown"]),
           "uid": tf.constant(["u1", "u2", "u3"]),
           "tags": tf.constant([["a", "b"], ["c", ""], ["", ""]]),
           "price": tf.constant([10.0, 12.0, 8.0]),
           "hour": tf.constant([1.0, 7.0, 20.0])}
  batch.update(overrides)
  return batch


def test_shapes_and_ids(layer):
  out = layer(_batch())
  assert {k: v.shape for k, v in out.items()} == {
      "page": (3, 3), "uid": (3, 2), "tags": (3, 4), "price": (3, 2), "hour": (3, 2)}
  np.testing.assert_array_equal(layer.ids("page", tf.constant(["home", "zzz"])), [1, 0])
  np.testing.assert_array_equal(layer.ids("hour", tf.constant([1.0, 7.0, 20.0])),
                                [0, 1, 3])
  assert layer.num_ids == {"page": 3, "uid": 10, "tags": 4, "hour": 4}


def test_unseen_values_share_the_oov_embedding(layer):
  out = layer(_batch(page=tf.constant(["unknown", "other", "home"])))["page"].numpy()
  np.testing.assert_array_equal(out[0], out[1])
  assert not np.allclose(out[0], out[2])


def test_multi_valued_mean_ignores_padding(layer):
  out = layer(_batch())["tags"].numpy()
  table = layer._table["tags"].embeddings.numpy()
  np.testing.assert_allclose(out[0], (table[1] + table[2]) / 2, atol=1e-6)  # a, b
  np.testing.assert_allclose(out[1], table[3], atol=1e-6)  # c alone, "" ignored
  np.testing.assert_allclose(out[2], np.zeros(4), atol=1e-6)  # nothing: zeros


def test_numeric_is_standardized_with_training_moments(layer):
  out = layer(_batch(price=tf.constant([10.0, 12.0, 14.0])))["price"].numpy()
  # z = 0, 1, 2: a linear projection, so equal steps between the outputs.
  np.testing.assert_allclose(out[1] - out[0], out[2] - out[1], atol=1e-5)


@pytest.mark.parametrize("mean,std", [(30.0, 0.0), (30.0, 1e-7), (0.0, 0.0)])
def test_a_numeric_field_without_spread_reads_zero_for_any_value(tmp_path, mean, std):
  """One value in training (std 0, or round-off of it): the model never saw what
  another value means, so every value reads as the training one (not as a z-score
  over a tiny std, which made any other value extreme)."""
  (tmp_path / "page.txt").write_text("home\n")
  (tmp_path / "tags.txt").write_text("a\n")
  layer = FeatureEmbeddings(SPEC, str(tmp_path),
                            {"price": {"mean": mean, "std": std, "count": 5}})
  out = layer(_batch(price=tf.constant([mean, mean + 1.0, mean - 1e6])))["price"]
  np.testing.assert_array_equal(out, np.tile(layer._projection["price"].bias, [3, 1]))
  assert embedding.has_no_spread(mean, std)
  assert not embedding.has_no_spread(30.0, 0.5) and not embedding.has_no_spread(0.0, 1e-3)


def test_missing_input_names_the_feature(layer):
  batch = _batch()
  del batch["price"]
  with pytest.raises(ValueError, match="'price'"):
    layer(batch)


def test_missing_vocabulary_file_names_the_field(tmp_path):
  with pytest.raises(ValueError, match="'page'.*vocabulary file"):
    FeatureEmbeddings(SPEC, str(tmp_path / "nowhere"))


def test_config_round_trip(layer):
  layer(_batch())
  again = FeatureEmbeddings.from_config(layer.get_config())
  again(_batch())
  again.set_weights(layer.get_weights())
  for k, v in layer(_batch()).items():
    np.testing.assert_allclose(again(_batch())[k], v)


def test_values_with_tabs_newlines_and_backslashes_find_their_own_rows(tmp_path):
  from hmdn.features.preprocessed import escape_value
  odd = ["tab\there", "new\nline", "back\\slash", "\\n", "ünï"]
  with open(tmp_path / "page.txt", "w", encoding="utf-8", newline="\n") as f:
    f.write("".join(escape_value(v) + "\n" for v in odd))
  (tmp_path / "tags.txt").write_text("a\n")
  layer = FeatureEmbeddings(SPEC, str(tmp_path))
  ids = layer.ids("page", tf.constant(odd + ["never seen"])).numpy().tolist()
  assert ids == [1, 2, 3, 4, 5, 0]


# Characters that escaping changes, beside plain ones: inputs built from them hit every
# case of the unescaped fast path (a value that is its own escape, one that is not).
_ODD_TEXT = st.text(alphabet=st.sampled_from(list("ab\\nt\t\n\r ü")), max_size=5)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(vocab=st.lists(_ODD_TEXT.filter(bool), min_size=1, max_size=6,
                                 unique=True),
                  inputs=st.lists(_ODD_TEXT, min_size=1, max_size=8))
def test_ids_equal_the_escaped_lookup_whether_or_not_the_file_holds_escapes(
    vocab, inputs):
  """A vocabulary with no escaped line is looked up with the raw inputs: every input
  must still get the id of its escaped form's line, or OOV, as with escaping."""
  from hmdn.features.preprocessed import escape_value, holds_escapes
  lines = [escape_value(v) for v in vocab]
  # A directory of its own per example: TensorFlow shares a table by its file's path.
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "page.txt")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
      f.write("".join(line + "\n" for line in lines))
    with open(os.path.join(directory, "tags.txt"), "w") as f:
      f.write("a\n")
    layer = FeatureEmbeddings(SPEC, directory)
    assert holds_escapes(path) == any("\\" in v for v in lines)
    queries = inputs + vocab
    ids = layer.ids("page", tf.constant(queries)).numpy().tolist()
  expected = [lines.index(escape_value(q)) + 1 if escape_value(q) in lines else 0
              for q in queries]
  assert ids == expected
