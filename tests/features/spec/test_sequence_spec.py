"""Sequence fields and history-derived sequences: the spec's keys, rules and TF specs."""
import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib

from spec_cases import _spec  # noqa: E402

BASE = [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "user_id", "kind": "categorical", "user_id": True},
    {"name": "item_id", "kind": "categorical", "embedding_dim": 16},
    {"name": "category", "kind": "categorical"},
    {"name": "price", "kind": "numeric"},
]
HIST = {"name": "hist_items", "kind": "sequence", "vocab_from": "item_id",
        "derived": {"kind": "history", "source": "user_id", "of": "item_id",
                    "order_by": "ts"}}
HIST_CAT = {"name": "hist_cats", "kind": "sequence", "vocab_from": "category",
            "derived": {"kind": "history", "source": "user_id", "of": "category",
                        "order_by": "ts"}}
RAW = {"name": "clicked", "kind": "sequence", "vocab_from": "item_id", "max_length": 3}


def _history(**derived):
  return dict(HIST, derived=dict(HIST["derived"], **derived))


def test_history_is_a_fed_model_input_without_a_vocabulary_of_its_own():
  spec = _spec(BASE + [HIST, HIST_CAT, RAW])
  inputs = [f.name for f in spec.model_inputs]
  assert "hist_items" in inputs and "hist_cats" in inputs and "clicked" in inputs
  assert spec["hist_items"].is_derived and spec["hist_items"].is_history
  assert not spec["hist_items"].derived.is_row_wise
  assert [f.name for f in spec.vocabulary_fields] == ["user_id", "item_id", "category"]
  assert spec["clicked"].vocabulary_field == "item_id"
  assert spec["item_id"].vocabulary_field == "item_id"
  assert not spec["clicked"].required  # an empty cell is an empty sequence
  assert [f.name for f in spec.sequence_fields] == ["hist_items", "hist_cats", "clicked"]


def test_histories_with_one_source_and_order_are_one_group_in_step():
  other = dict(_history(), name="short_hist")
  spec = _spec(BASE + [HIST, HIST_CAT, dict(other, max_length=5)])
  groups = spec.history_groups
  assert [(g.outputs, g.key, g.of, g.order_by, g.max_length) for g in groups] == [
      (("hist_items", "hist_cats"), "user_id", ("item_id", "category"), "ts", 50),
      (("short_hist",), "user_id", ("item_id",), "ts", 5)]


def test_round_trip_keeps_sequence_keys_once(tmp_path):
  spec = _spec(BASE + [HIST, dict(RAW, separator=";")])
  d = spec.to_dict()
  raw = next(f for f in d["features"] if f["name"] == "clicked")
  assert raw == {"name": "clicked", "kind": "sequence", "separator": ";",
                 "vocab_from": "item_id", "max_length": 3}
  hist = next(f for f in d["features"] if f["name"] == "hist_items")
  assert "max_length" not in hist and "max_length" not in hist["derived"]
  path = str(tmp_path / "s.yaml")
  spec.save(path)
  assert spec_lib.load_spec(path).features == spec.features


def test_parsing_spec_is_ragged_and_serving_tensor_is_batch_by_none():
  spec = _spec(BASE + [HIST, RAW])
  for for_serving in (False, True):
    parsing = spec.parsing_spec(for_serving=for_serving)
    for name in ("hist_items", "clicked"):
      assert isinstance(parsing[name], tf.io.RaggedFeature)
      assert parsing[name].dtype == tf.string
  assert "ts" not in spec.parsing_spec(for_serving=True)
  ts = spec.tensor_specs(batch_size=None)["hist_items"]
  assert ts.shape.as_list() == [None, None] and ts.dtype == tf.string


def test_a_sequence_of_any_length_parses_from_a_tf_example():
  spec = _spec(BASE + [HIST])
  examples = []
  for values in ([b"a", b"b", b"c"], []):
    ex = tf.train.Example()
    ex.features.feature["hist_items"].bytes_list.value.extend(values)
    examples.append(ex.SerializeToString())
  parsed = tf.io.parse_example(examples, {"hist_items": spec.parsing_spec()["hist_items"]})
  dense = parsed["hist_items"].to_tensor(default_value="").numpy()
  np.testing.assert_array_equal(dense, [[b"a", b"b", b"c"], [b"", b"", b""]])


def test_parse_value_keeps_order_and_every_value():
  spec = _spec(BASE + [RAW])
  f = spec["clicked"]
  assert spec.parse_value(f, "a|b|c|d|e") == ["a", "b", "c", "d", "e"]
  assert spec_lib.truncate(f, ["a", "b", "c", "d", "e"]) == ["c", "d", "e"]
  assert spec_lib.truncate(f, ["a"]) == ["a"]
  assert spec.parse_value(f, [3, 4.0, "x"]) == ["3", "4", "x"]
  assert spec.parse_value(f, "") == [] and spec.parse_value(f, None) == []
  assert spec.parse_value(f, []) == []


@pytest.mark.parametrize("raw,match", [
    ("a||b", r"field 'clicked' position 1: empty value '' in a sequence"),
    (["a", " "], r"field 'clicked' position 1: empty value ' '"),
    (["a", {"id": 1}], r"field 'clicked' position 1: \{'id': 1\} is not a categorical"),
    ([float("nan")], r"field 'clicked' position 0: nan is not a categorical value"),
    (["a", None], r"field 'clicked' position 1: None is not a categorical"),
    (["a", True], r"field 'clicked' position 1: True is not a categorical"),
    (["a", ["b"]], r"field 'clicked' position 1: \['b'\] is not a categorical"),
    ({"a": 1}, r"field 'clicked': \{'a': 1\} is not a sequence"),
    (7, r"field 'clicked': 7 is not a sequence"),
])
def test_parse_value_refuses_bad_elements_naming_field_and_position(raw, match):
  spec = _spec(BASE + [RAW])
  with pytest.raises(spec_lib.SpecError, match=match):
    spec.parse_value(spec["clicked"], raw)


@pytest.mark.parametrize("field,match", [
    (dict(RAW, vocab_from=None), r"'clicked': a sequence needs vocab_from"),
    ({"name": "clicked", "kind": "sequence"}, r"'clicked': a sequence needs vocab_from"),
    (dict(RAW, vocab_from="movie"),
     r"'clicked': vocab_from names 'movie', which is not a field of the spec"),
    (dict(RAW, vocab_from="price"),
     r"'clicked': vocab_from names 'price', which has kind 'numeric'"),
    (dict(RAW, vocab_from="clicked"), r"'clicked': vocab_from names the field itself"),
    (dict(RAW, vocab_from=3), r"'clicked': vocab_from must be a field name"),
    (dict(RAW, max_length=0), r"'clicked': max_length must be >= 1, got 0"),
    (dict(RAW, max_length=True), r"'clicked': max_length must be an integer, got True"),
    (dict(RAW, max_length=2.5), r"'clicked': max_length must be an integer, got 2.5"),
    (dict(RAW, distribution_level=0),
     r"'clicked': a sequence cannot be a distribution field \(distribution_level=0\)"),
    (dict(RAW, role="passthrough"), r"'clicked': a sequence is a model input"),
    (dict(RAW, embedding_dim=8), r"'clicked': .* it takes no embedding_dim of its own"),
    (dict(RAW, hash_buckets=10), r"'clicked': .* it takes no hash_buckets of its own"),
    (dict(RAW, default=""), r"'clicked': .* it takes no default of its own"),
    (dict(RAW, user_id=True), r"'clicked': the user_id field must be categorical"),
    ({"name": "tags", "kind": "categorical", "vocab_from": "item_id"},
     r"'tags': vocab_from is for sequence fields, kind is 'categorical'"),
    ({"name": "tags", "kind": "categorical", "max_length": 50},
     r"'tags': max_length is for sequence fields"),
])
def test_bad_sequence_fields_name_field_and_value(field, match):
  with pytest.raises(spec_lib.SpecError, match=match):
    _spec(BASE + [field])


def test_vocab_from_naming_a_derived_field_is_refused():
  bucket = {"name": "item_bucket", "kind": "categorical",
            "derived": {"kind": "count_bucket", "source": "item_id", "boundaries": [2]}}
  with pytest.raises(spec_lib.SpecError,
                     match=r"'clicked': vocab_from names 'item_bucket', a derived field"):
    _spec(BASE + [bucket, dict(RAW, vocab_from="item_bucket")])


def test_a_sequence_key_on_another_kind_is_refused_even_at_its_default():
  with pytest.raises(spec_lib.SpecError, match=r"'price': max_length is for sequence"):
    _spec(BASE[:-1] + [{"name": "price", "kind": "numeric", "max_length": 50}])


@pytest.mark.parametrize("field,match", [
    (_history(source=""), r"'hist_items': a history needs `source`"),
    (_history(of=""), r"'hist_items': a history needs `of`"),
    (_history(order_by=""), r"'hist_items': a history needs `order_by`"),
    (_history(order_by="when"), r"history order_by 'when' is not a field declared before"),
    (_history(order_by="category"),
     r"history order_by 'category' must be numeric .* kind 'categorical'"),
    (_history(order_by="click"), r"history order_by 'click' must be numeric with role "
                                 r"feature or passthrough; it has kind 'numeric' role 'label'"),
    (_history(of="price"), r"history of 'price' must be categorical .* kind 'numeric'"),
    (_history(source="price"), r"history source 'price' must be categorical"),
    (_history(of="user_id"), r"a history's `of` 'user_id' must differ from its source"),
    (dict(_history(of="category")),
     r"a history of 'category' shares its vocabulary: vocab_from must be 'category', "
     r"got 'item_id'"),
    (_history(boundaries=[1.0]), r"'hist_items': a history takes no derived boundaries"),
    (_history(value="x"), r"'hist_items': a history takes no derived value"),
    (_history(order_by=3), r"'hist_items': derived: order_by must be a field name"),
    ({k: v for k, v in HIST.items() if k != "vocab_from"} | {"kind": "categorical"},
     r"'hist_items': a history is a sequence: kind must be 'sequence'"),
    ({"name": "seq", "kind": "sequence", "vocab_from": "item_id",
      "derived": {"kind": "mode", "source": "user_id", "of": "item_id"}},
     r"'seq': a derived field must be a categorical feature"),
    ({"name": "m", "kind": "categorical",
      "derived": {"kind": "mode", "source": "user_id", "of": "item_id", "order_by": "ts"}},
     r"'m': order_by is for a history, not a mode"),
])
def test_bad_histories_name_field_and_value(field, match):
  with pytest.raises(spec_lib.SpecError, match=match):
    _spec(BASE + [field])


def test_history_order_by_must_be_required():
  base = [dict(f, default=0) if f["name"] == "ts" else f for f in BASE]
  with pytest.raises(spec_lib.SpecError, match=r"'hist_items': history order_by 'ts' has "
                                               r"a default \(0\)"):
    _spec(base + [HIST])


def test_history_source_must_be_raw():
  cross = {"name": "u_x_c", "kind": "categorical",
           "derived": {"kind": "cross", "sources": ["user_id", "category"]}}
  with pytest.raises(spec_lib.SpecError,
                     match=r"history source 'u_x_c' must be a raw field \(it is a cross\)"):
    _spec(BASE + [cross, _history(source="u_x_c")])


def test_max_length_in_derived_is_an_unknown_key_pointing_at_none():
  field = dict(HIST, derived=dict(HIST["derived"], max_length=50))
  with pytest.raises(spec_lib.SpecError, match=r"unknown key\(s\) \['max_length'\]"):
    _spec(BASE + [field])


def test_yaml_history_spec_loads():
  text = """
name: t
features:
  - {name: click, kind: numeric, role: label}
  - {name: ts, kind: numeric, role: passthrough}
  - {name: user_id, kind: categorical}
  - {name: item_id, kind: categorical}
  - {name: hist, kind: sequence, vocab_from: item_id, max_length: 20,
     derived: {kind: history, source: user_id, of: item_id, order_by: ts}}
"""
  spec = spec_lib.spec_from_yaml(text)
  assert spec["hist"].max_length == 20 and spec["hist"].derived.order_by == "ts"
  with pytest.raises(spec_lib.SpecError, match=r"'hist': .* no embedding_dim"):
    spec_lib.spec_from_yaml(text.replace("max_length: 20", "embedding_dim: 8"))
