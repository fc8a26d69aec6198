"""Sequence fields in the model: one table with vocab_from, "" padding masked out, an
empty history pooled to zeros, DIN vs the mean vs none, batch independence of every
model, the options, the implicit view, and the serving signatures' truncation."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.models import registry
from hmdn.models.ctr_model import CTRModel
from hmdn.models.embedding import FeatureEmbeddings
from hmdn.models.registry import ModelConfig

MAX_LENGTH = 6
SPEC = {"name": "seq", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0,
     "embedding_dim": 3},
    {"name": "user", "kind": "categorical", "hash_buckets": 7, "embedding_dim": 2},
    {"name": "item", "kind": "categorical", "embedding_dim": 4},
    {"name": "cat", "kind": "categorical", "embedding_dim": 3},
    {"name": "hist", "kind": "sequence", "vocab_from": "item", "max_length": MAX_LENGTH},
    {"name": "hist_cat", "kind": "sequence", "vocab_from": "cat", "max_length": MAX_LENGTH,
     "derived": {"kind": "history", "source": "user", "of": "cat", "order_by": "ts"}},
]}
ITEMS = [f"i{k}" for k in range(8)]
SMALL = dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
             codebook_size=4, codebook_warmup_steps=2, din_units=(8,))


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  (d / "scenario.txt").write_text("s0\ns1\n")
  (d / "item.txt").write_text("\n".join(ITEMS) + "\n")
  (d / "cat.txt").write_text("c0\nc1\nc2\n")
  return str(d)


def _spec(**marks) -> spec_lib.FeatureSpec:
  spec = spec_lib.spec_from_dict(SPEC)
  return spec_lib.FeatureSpec(name=spec.name, source="seq.yaml", features=tuple(
      dataclasses.replace(f, **marks) if f.name == "hist" else f for f in spec.features))


def _features(hist, hist_cat=None, items=None):
  n = len(hist)
  hist_cat = hist_cat if hist_cat is not None else [["c1"] * len(h) for h in hist]
  items = items or [ITEMS[k % len(ITEMS)] for k in range(n)]
  return {"scenario": tf.constant(["s0", "s1"] * (n // 2) + ["s0"] * (n % 2)),
          "user": tf.constant([f"u{k}" for k in range(n)]),
          "item": tf.constant(items), "cat": tf.constant(["c0", "c2"] * (n // 2) +
                                                         ["c0"] * (n % 2)),
          "hist": _dense(hist), "hist_cat": _dense(hist_cat)}


def _dense(rows, width=None):
  width = width or max([len(r) for r in rows] + [1])
  return tf.constant([list(r) + [""] * (width - len(r)) for r in rows])


def _layer(vocab_dir, pooling="din", normalization="softmax"):
  tf.keras.utils.set_random_seed(0)
  return FeatureEmbeddings(SPEC, vocab_dir, sequence_pooling=pooling,
                           din_normalization=normalization, din_units=(8,))


def test_a_sequence_shares_its_vocab_from_table_and_oov(vocab_dir):
  layer = _layer(vocab_dir, "mean")
  out = layer(_features([["i3"], ["zzz", "never"]], items=["i3", "unseen"]))
  assert out["hist"].shape == (2, 4) and out["hist_cat"].shape == (2, 3)
  np.testing.assert_array_equal(out["hist"][0], out["item"][0])  # the same row
  np.testing.assert_array_equal(out["hist"][1], out["item"][1])  # OOV = item's OOV
  assert not any("hist" in w.name for w in layer.weights)  # no table of its own


@pytest.mark.parametrize("pooling,normalization",
                         [("din", "softmax"), ("din", "none"), ("mean", "softmax")])
def test_padding_is_never_an_id(vocab_dir, pooling, normalization):
  layer = _layer(vocab_dir, pooling, normalization)
  rows = [["i1", "i2"], ["i5"], []]
  before = layer(_features(rows))
  wider = layer({**_features(rows), "hist": _dense(rows, width=MAX_LENGTH)})
  # "" looks up the OOV row (0) of StringLookup: moving that row moves nothing.
  table = layer._table["item"].embeddings  # pylint: disable=protected-access
  table.assign(tf.tensor_scatter_nd_update(table, [[0]], [[9.0, -9.0, 9.0, -9.0]]))
  moved = layer(_features(rows))
  for out in (wider, moved):
    np.testing.assert_allclose(out["hist"], before["hist"], atol=1e-6)
  np.testing.assert_array_equal(before["hist"][2], np.zeros(4))  # empty: zeros


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_empty_histories_are_zeros_under_mixed_precision(vocab_dir, normalization):
  tf.keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    layer = _layer(vocab_dir, "din", normalization)
    out = layer(_features([[], []], hist_cat=[[], []]))
  finally:
    tf.keras.mixed_precision.set_global_policy("float32")
  for name in ("hist", "hist_cat"):
    assert np.isfinite(out[name].numpy()).all()
    np.testing.assert_array_equal(out[name], np.zeros(out[name].shape))


def test_din_weighs_by_the_candidate_and_mean_does_not(vocab_dir):
  rows = [["i1", "i2", "i3"]] * 2
  features = _features(rows, items=["i1", "i6"])
  din, mean = _layer(vocab_dir, "din")(features), _layer(vocab_dir, "mean")(features)
  np.testing.assert_allclose(mean["hist"][0], mean["hist"][1], atol=1e-7)
  assert np.abs(din["hist"][0] - din["hist"][1]).max() > 1e-6  # other query
  assert np.abs(din["hist"] - mean["hist"]).max() > 1e-6


def test_config_round_trip_keeps_the_pooling(vocab_dir):
  layer = _layer(vocab_dir, "mean")
  again = FeatureEmbeddings.from_config(layer.get_config())
  assert again.sequence_pooling == "mean"
  with pytest.raises(ValueError, match="sequence_pooling must be one of"):
    FeatureEmbeddings(SPEC, vocab_dir, sequence_pooling="max")


def _alone_vs_padded(model):
  """A row scored alone, and among rows whose longest history is MAX_LENGTH."""
  row = _features([["i1", "i4"]], hist_cat=[["c2"]])
  batch = _features([["i1", "i4"], ITEMS[:MAX_LENGTH], ["i7"] * MAX_LENGTH, []],
                    hist_cat=[["c2"], ["c0"] * MAX_LENGTH, ["c1"], []])
  return model(row), model(batch)


@pytest.mark.parametrize("name", registry.model_names())
def test_the_padding_length_never_changes_a_prediction(vocab_dir, name):
  tf.keras.utils.set_random_seed(0)
  model = CTRModel(_spec(), vocab_dir, {}, ModelConfig.of(name=name, **SMALL))
  alone, padded = _alone_vs_padded(model)
  for key, value in alone.items():
    np.testing.assert_allclose(value.numpy()[0], padded[key].numpy()[0], atol=1e-6,
                               err_msg=f"{name}: {key}")


def test_sequence_pooling_none_ignores_the_histories(vocab_dir):
  tf.keras.utils.set_random_seed(0)
  model = CTRModel(_spec(), vocab_dir, {}, ModelConfig.of(name="dnn",
                                                          sequence_pooling="none"))
  one = model(_features([["i1"], ["i2", "i3"]]))["logits"]
  other = model(_features([["i5", "i6"], []]))["logits"]
  np.testing.assert_array_equal(one, other)
  assert not [w.name for w in model.weights if "attention" in w.name]
  din = CTRModel(_spec(), vocab_dir, {}, ModelConfig.of(name="dnn"))
  moved = din(_features([["i1"], ["i2", "i3"]]))["logits"] - din(
      _features([["i5", "i6"], []]))["logits"]
  assert np.abs(moved.numpy()).min() > 1e-7


def test_the_implicit_view_reads_the_interest_vector_when_marked(vocab_dir):
  model = CTRModel(_spec(implicit_view=True), vocab_dir, {},
                   ModelConfig.of(name="hmdn_moe", **SMALL))
  embedded = model.embeddings(_features([["i1", "i2"], ["i3"]]))
  np.testing.assert_array_equal(model._view_inputs(embedded)["implicit"],
                                embedded["hist"])
  with pytest.raises(ValueError, match="implicit_fields: \\['hist'\\] are not embedded"):
    CTRModel(_spec(), vocab_dir, {}, ModelConfig.of(
        name="hmdn_moe", implicit_fields=("hist",), sequence_pooling="none", **SMALL))


def test_the_options_are_checked_in_one_line():
  from hmdn.pipeline.variants import parse_variant
  with pytest.raises(ValueError) as e:
    ModelConfig.of(sequence_pooling="max").validate()
  assert "sequence_pooling" in str(e.value) and "'max'" in str(e.value)
  assert "\n" not in str(e.value)
  assert parse_variant("dnn:sequence_pooling=mean") == ("dnn", {"sequence_pooling": "mean"})
  assert parse_variant("dnn:sequence_pooling=din:din_normalization=none")[1] == {
      "sequence_pooling": "din", "din_normalization": "none"}
  with pytest.raises(ValueError, match="din_normalization does not apply"):
    parse_variant("dnn:sequence_pooling=mean:din_normalization=none")


def _example(hist, item="i2", user="u1", ints=()):
  """A serialized tf.Example; the fields named in `ints` as int64 lists of the ids."""
  values = {"scenario": ["s1"], "user": [user], "item": [item], "cat": ["c1"],
            "hist": hist, "hist_cat": ["c1", "c1"] if hist else []}
  return tf.train.Example(features=tf.train.Features(feature={
      k: _ints(v) if k in ints else _bytes(v) for k, v in values.items()}
  )).SerializeToString()


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


NUMERIC_IDS = ["100", "123", "7"]  # items a client may send as int64 ids


@pytest.fixture(scope="module")
def exported(vocab_dir, tmp_path_factory):
  """One export of a DIN model, loaded from disk (the signature tests share it): its
  item vocabulary holds ITEMS and NUMERIC_IDS."""
  from hmdn.pipeline import export
  d = tmp_path_factory.mktemp("numeric_vocab")
  for name in ("scenario", "cat"):
    (d / f"{name}.txt").write_text(open(f"{vocab_dir}/{name}.txt").read())
  (d / "item.txt").write_text("\n".join(ITEMS + NUMERIC_IDS) + "\n")
  tf.keras.utils.set_random_seed(0)
  spec = _spec()
  model = CTRModel(spec, str(d), {}, ModelConfig.of(name="dnn"))
  return tf.saved_model.load(export.export(model, spec, str(
      tmp_path_factory.mktemp("export") / "export")))


def test_the_signatures_take_any_length_keeping_the_most_recent(exported):
  """The exported SavedModel: serving_default (tf.Example bytes lists) and predict
  (`[batch, None]` strings) accept empty and over-long histories, an over-long one
  scored as its last max_length values."""
  loaded = exported
  long = [ITEMS[k % len(ITEMS)] for k in range(3 * MAX_LENGTH + 1)]
  kept = long[-MAX_LENGTH:]
  serve = loaded.signatures["serving_default"]
  by_example = serve(examples=tf.constant(
      [_example(long), _example(kept), _example([])]))["probability"].numpy()
  np.testing.assert_allclose(by_example[0], by_example[1], atol=1e-7)
  oldest = serve(examples=tf.constant([_example(long[:MAX_LENGTH])]))["probability"]
  assert np.abs(by_example[0] - oldest.numpy()[0]) > 1e-7  # the oldest would differ
  features = _features([long, kept, []], hist_cat=[["c1", "c1"]] * 2 + [[]],
                       items=["i2"] * 3)
  features.update(scenario=tf.constant(["s1"] * 3), cat=tf.constant(["c1"] * 3),
                  user=tf.constant(["u1"] * 3))
  by_tensor = loaded.signatures["predict"](**features)["probability"].numpy()
  np.testing.assert_allclose(by_tensor, by_example, atol=1e-6)
  assert np.isfinite(by_tensor).all()


def test_int64_ids_in_a_served_example_score_as_their_decimal_strings(exported):
  """The exported SavedModel, loaded from disk: one instance serialized with its item
  and history as bytes lists of "123" etc. and as int64 lists of 123 etc. gets
  identical outputs from serving_default and classify, in one batch and alone; the ids
  are in the vocabulary (ids it does not hold score otherwise), and a float_list
  history is refused naming the feature."""
  hist = ["100", "7", "123", "100"]
  as_bytes = _example(hist, item="123", user="42")
  as_ints = _example(hist, item="123", user="42", ints=("hist", "item", "user"))
  serve = exported.signatures["serving_default"]
  both = serve(examples=tf.constant([as_bytes, as_ints]))
  alone = serve(examples=tf.constant([as_ints]))
  for name, value in both.items():
    np.testing.assert_array_equal(value[0], value[1], err_msg=name)
    np.testing.assert_array_equal(value[1], alone[name][0], err_msg=name)
  scores = exported.signatures["classify"](inputs=tf.constant([as_bytes, as_ints]))
  np.testing.assert_array_equal(scores["scores"][0], scores["scores"][1])
  unknown = serve(examples=tf.constant([_example(["999", "998", "997", "996"], item="995",
                                                 user="42", ints=("hist", "item"))]))
  assert np.abs(unknown["probability"][0] - both["probability"][0]) > 1e-7
  floats = tf.train.Example.FromString(as_bytes)
  floats.features.feature["hist"].Clear()
  floats.features.feature["hist"].float_list.value.extend([100.0, 7.0])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="feature hist is a float_list at instance 1; a categorical or "
                           "sequence feature takes its ids as a bytes_list or an int64_list"):
    serve(examples=tf.constant([as_ints, floats.SerializeToString()]))
