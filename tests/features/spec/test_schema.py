"""Tests of the feature spec: validation, raw-value parsing and the derived TF specs."""
import os


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from hmdn.beam_jobs.transforms.examples import ToExampleFn
from hmdn.features import spec as spec_lib  # noqa: E402
from hmdn.pipeline import data  # noqa: E402


def _base():
  """A minimal valid spec as a dict, to break one key at a time."""
  return {"name": "t", "features": [
      {"name": "click", "kind": "numeric", "role": "label"},
      {"name": "scenario", "kind": "categorical", "distribution_level": 0},
      {"name": "item", "kind": "categorical"},
      {"name": "price", "kind": "numeric"},
  ]}


def _with(*extra, change=None):
  d = _base()
  d["features"] += list(extra)
  if change:
    name, key, value = change
    for f in d["features"]:
      if f["name"] == name:
        f[key] = value
  return d


# A spec with every kind and role, for the derived-spec and tf.Example tests.
_ALL_KINDS = spec_lib.spec_from_dict({"name": "all", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "p", "kind": "numeric", "role": "oracle"},
    {"name": "conv", "kind": "numeric", "role": "passthrough", "default": 0},
    {"name": "sub", "kind": "categorical", "role": "passthrough"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "user", "kind": "categorical", "user_id": True},
    {"name": "device", "kind": "categorical", "default": "unknown"},
    {"name": "tags", "kind": "multi_categorical", "separator": ";"},
    {"name": "price", "kind": "numeric", "default": 1.5},
    {"name": "hour", "kind": "numeric", "boundaries": [6, 12, 18]},
]})


# --- The shipped spec -----------------------------------------------------------------
def test_shipped_synthetic_spec_loads_by_name_and_path():
  by_name = spec_lib.load_spec("synthetic")
  by_path = spec_lib.load_spec(os.path.join(spec_lib.SPECS_DIR, "synthetic.yaml"))
  assert by_name.features == by_path.features
  assert by_name.label.name == "click"
  assert by_name.oracle.name == "true_ctr"
  assert by_name.user_id.name == "user_id"
  assert [f.name for f in by_name.distribution_fields] == ["scenario", "user_group"]
  assert "subgroup" not in [f.name for f in by_name.model_inputs]
  assert by_name["hour"].boundaries == (3, 6, 9, 12, 15, 18, 21)
  assert by_name["item_tags"].kind == spec_lib.MULTI_CATEGORICAL


def test_unknown_feature_lookup_names_the_field():
  with pytest.raises(KeyError, match="nope"):
    spec_lib.load_spec("synthetic")["nope"]


# --- Validation -----------------------------------------------------------------------
@pytest.mark.parametrize("data,match", [
    (_with({"name": "item", "kind": "categorical"}), r"'item'.*declared twice"),
    (_with(change=("item", "kind", "text")), r"'item'.*unknown kind 'text'"),
    (_with(change=("item", "role", "target")), r"'item'.*unknown role 'target'"),
    (_with(change=("click", "role", "feature")), r"needs a field with role 'label'"),
    (_with(change=("click", "kind", "categorical")),
     r"'click'.*label field .* must be numeric.*'categorical'"),
    (_with(change=("price", "distribution_level", 1)),
     r"'price'.*distribution_level .* must be categorical.*'numeric'"),
    (_with(change=("item", "distribution_level", 0)), r"share a distribution_level: \[0, 0\]"),
    (_with(change=("price", "boundaries", [1, 3, 2])),
     r"'price'.*strictly increasing.*\[1.0, 3.0, 2.0\]"),
    (_with(change=("price", "boundaries", [1, 1])), r"'price'.*strictly increasing"),
    (_with(change=("item", "boundaries", [1, 2])), r"'item'.*boundaries are for numeric"),
    (_with(change=("price", "hash_buckets", 10)), r"'price'.*hash_buckets"),
    (_with(change=("item", "embeding_dim", 4)), r"'item'.*unknown key.*'embeding_dim'"),
    (_with(change=("item", "embedding_dim", 0)), r"'item'.*embedding_dim must be >= 1"),
    (_with(change=("item", "vocab_min_count", "2")),
     r"'item'.*vocab_min_count must be an integer, got '2'"),
    (_with(change=("price", "default", "cheap")),
     r"'price'.*default must be a number.*got 'cheap'"),
    (_with(change=("price", "user_id", True)), r"'price'.*user_id.*categorical"),
])
def test_validation_errors_name_the_field(data, match):
  with pytest.raises(spec_lib.SpecError, match=match):
    spec_lib.spec_from_dict(data, source="my.yaml")


def test_validation_error_names_the_source():
  with pytest.raises(spec_lib.SpecError, match=r"^my\.yaml: "):
    spec_lib.spec_from_dict(_with(change=("item", "kind", "text")), source="my.yaml")


@pytest.mark.parametrize("data", [[1, 2], {"name": "x"}, {"features": "click"},
                                  {"features": [{"name": "a"}]}])
def test_malformed_documents_are_spec_errors(data):
  with pytest.raises(spec_lib.SpecError, match="doc.yaml"):
    spec_lib.spec_from_dict(data, source="doc.yaml")


def test_load_spec_missing_file_names_the_path(tmp_path):
  path = str(tmp_path / "absent.yaml")
  with pytest.raises(spec_lib.SpecError, match=f"{path}: cannot read"):
    spec_lib.load_spec(path)


def test_load_spec_invalid_yaml_names_the_path(tmp_path):
  path = tmp_path / "broken.yaml"
  path.write_text("name: [unclosed\nfeatures: {")
  with pytest.raises(spec_lib.SpecError, match=f"{path}: not valid YAML"):
    spec_lib.load_spec(str(path))


def test_load_spec_invalid_field_names_path_and_field(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text(yaml.safe_dump(_with(change=("item", "kind", "txt"))))
  with pytest.raises(spec_lib.SpecError, match=f"{path}: field 'item': unknown kind"):
    spec_lib.load_spec(str(path))


# --- parse_value ----------------------------------------------------------------------
@pytest.mark.parametrize("field,raw,match", [
    ("scenario", "", r"'scenario'.*empty value"),
    ("scenario", "   ", r"'scenario'.*empty value"),
    ("click", None, r"'click'.*no value \(a missing key or null\)"),
    ("price", "abc", r"'price'.*'abc' is not a number"),
    ("price", "nan", r"'price'.*'nan' is not a finite number"),
    ("price", "inf", r"'price'.*'inf' is not a finite number"),
    ("click", "2", r"'click'.*label '2' is not 0 or 1"),
    ("click", "-1", r"'click'.*label '-1' is not 0 or 1"),
    ("click", "0.5", r"'click'.*label '0.5' is not 0 or 1"),
    ("click", "", r"'click'.*empty value"),
    ("click", "yes", r"'click'.*label 'yes' is not a number"),
    ("click", "nan", r"'click'.*label 'nan' is not 0 or 1"),
])
def test_parse_value_errors_name_field_and_value(field, raw, match):
  spec = spec_lib.spec_from_dict(_base())
  with pytest.raises(spec_lib.SpecError, match=match):
    spec.parse_value(spec[field], raw)


def test_parse_value_types_and_defaults():
  spec = _ALL_KINDS
  assert spec.parse_value(spec["click"], "1") == 1.0
  assert spec.parse_value(spec["click"], 0) == 0.0
  assert spec.parse_value(spec["price"], " 2.25 ") == 2.25
  assert spec.parse_value(spec["price"], "") == 1.5  # default for an empty cell
  assert spec.parse_value(spec["price"], None) == 1.5
  assert spec.parse_value(spec["device"], "") == "unknown"
  assert spec.parse_value(spec["conv"], "") == 0.0
  assert spec.parse_value(spec["user"], 7.0) == "7"  # JSON ids: 7.0 and 7 agree
  assert spec.parse_value(spec["user"], 7) == "7"
  assert spec.parse_value(spec["user"], "u1") == "u1"


def test_parse_value_splits_multi_categorical():
  spec = _ALL_KINDS
  tags = spec["tags"]
  assert spec.parse_value(tags, "a;b;c") == ["a", "b", "c"]
  assert spec.parse_value(tags, "a;;b;") == ["a", "b"]  # empty pieces dropped
  assert spec.parse_value(tags, "a|b") == ["a|b"]  # only the declared separator
  assert spec.parse_value(tags, ["x", 3, ""]) == ["x", "3"]  # a JSON list
  with pytest.raises(spec_lib.SpecError, match="'tags'"):
    spec.parse_value(tags, "")


# --- Save / load ----------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
  for spec in (_ALL_KINDS, spec_lib.load_spec("synthetic")):
    path = str(tmp_path / f"{spec.name}.yaml")
    spec.save(path)
    loaded = spec_lib.load_spec(path)
    assert loaded.name == spec.name
    assert loaded.features == spec.features
    assert loaded.source == path


# --- Derived TF specs -----------------------------------------------------------------
def test_parsing_spec_types_per_kind():
  parsing = _ALL_KINDS.parsing_spec()
  assert set(parsing) == set(_ALL_KINDS.names)
  assert isinstance(parsing["tags"], tf.io.RaggedFeature)
  assert parsing["tags"].dtype == tf.string
  for name in ("sub", "scenario", "user", "device"):
    assert parsing[name] == tf.io.FixedLenFeature(
        [], tf.string, default_value=None if name != "device" else "unknown")
  for name in ("click", "p", "hour"):
    assert parsing[name] == tf.io.FixedLenFeature([], tf.float32)
  assert parsing["price"].default_value == 1.5
  assert parsing["conv"].default_value == 0.0


def test_parsing_spec_for_serving_keeps_model_inputs_only():
  serving = _ALL_KINDS.parsing_spec(for_serving=True)
  assert set(serving) == {"scenario", "user", "device", "tags", "price", "hour"}


def test_tensor_specs_dtypes_and_shapes():
  specs = _ALL_KINDS.tensor_specs(batch_size=4)
  assert set(specs) == {"scenario", "user", "device", "tags", "price", "hour"}
  assert specs["tags"] == tf.TensorSpec([4, None], tf.string, name="tags")
  assert specs["scenario"] == tf.TensorSpec([4], tf.string, name="scenario")
  assert specs["price"] == tf.TensorSpec([4], tf.float32, name="price")
  assert specs["hour"] == tf.TensorSpec([4], tf.float32, name="hour")
  assert _ALL_KINDS.tensor_specs()["user"].shape.as_list() == [None]


# --- tf.Example round trip ------------------------------------------------------------
def _serialize(spec, records):
  """Through the Beam job's own writer, which takes a columnar batch (split, columns)."""
  fn = ToExampleFn(spec, "rows_written_test")
  fn.setup()
  columns = {name: [r[name] for r in records] for name in records[0]}
  return [out for batch in fn.process(("train", columns)) for out in batch]


def test_example_round_trip_every_kind():
  """Records written by the Beam job come back equal through the trainer's parser."""
  spec = _ALL_KINDS
  raw_rows = [
      {"click": "1", "p": "0.25", "conv": "", "sub": "h0", "scenario": "s0",
       "user": "u1", "device": "", "tags": "a;b;c", "price": "", "hour": "13.5"},
      {"click": "0", "p": "0.75", "conv": "1", "sub": "h1", "scenario": "s1",
       "user": "u2", "device": "ios", "tags": "z", "price": "3.25", "hour": "0"},
  ]
  records = [{f.name: spec.parse_value(f, row[f.name]) for f in spec.features}
             for row in raw_rows]
  serialized = _serialize(spec, records)
  assert len(serialized) == 2 and all(isinstance(s, bytes) for s in serialized)
  parsed = data.parse_batch(tf.constant(serialized), spec)
  assert set(parsed) == set(spec.names)
  decode = lambda t: [x.decode() for x in t.numpy().ravel()]  # noqa: E731
  assert decode(parsed["scenario"]) == ["s0", "s1"]
  assert decode(parsed["user"]) == ["u1", "u2"]
  assert decode(parsed["device"]) == ["unknown", "ios"]
  assert decode(parsed["sub"]) == ["h0", "h1"]
  assert parsed["tags"].shape == (2, 3)
  assert [[x.decode() for x in row] for row in parsed["tags"].numpy()] == [
      ["a", "b", "c"], ["z", "", ""]]
  np.testing.assert_array_equal(parsed["click"].numpy(), [1.0, 0.0])
  np.testing.assert_array_equal(parsed["p"].numpy(), [0.25, 0.75])
  np.testing.assert_array_equal(parsed["conv"].numpy(), [0.0, 1.0])
  np.testing.assert_array_equal(parsed["price"].numpy(), [1.5, 3.25])
  np.testing.assert_array_equal(parsed["hour"].numpy(), [13.5, 0.0])
  assert parsed["hour"].dtype == tf.float32


def test_example_round_trip_for_serving_drops_non_inputs():
  spec = _ALL_KINDS
  record = {f.name: spec.parse_value(f, v) for f, v in zip(
      spec.features, ["1", "0.5", "0", "h", "s", "u", "pc", "t", "2", "3"])}
  parsed = data.parse_batch(tf.constant(_serialize(spec, [record])), spec,
                            for_serving=True)
  assert set(parsed) == {"scenario", "user", "device", "tags", "price", "hour"}
  assert parsed["device"].numpy()[0] == b"pc"


# --- Derived fields ---------------------------------------------------------------------
_DERIVED = [
    {"name": "user", "kind": "categorical"},
    {"name": "age", "kind": "numeric"},
    {"name": "activity", "kind": "categorical", "distribution_level": 1,
     "derived": {"kind": "count_bucket", "source": "user", "boundaries": [2, 5]}},
    {"name": "age_bucket", "kind": "categorical",
     "derived": {"kind": "bucket", "source": "age", "boundaries": [18, 25]}},
    {"name": "scenario_x_activity", "kind": "categorical",
     "derived": {"kind": "cross", "sources": ["scenario", "activity"]}},
]


def test_derived_fields_are_embedded_but_never_fed():
  spec = spec_lib.spec_from_dict(_with(*_DERIVED))
  derived = ["activity", "age_bucket", "scenario_x_activity"]
  assert [f.name for f in spec.derived_fields] == derived
  assert not set(derived) & {f.name for f in spec.model_inputs}
  assert not set(derived) & set(spec.tensor_specs())
  assert not set(derived) & set(spec.parsing_spec(for_serving=True))
  assert set(derived) <= set(spec.parsing_spec())  # the TFRecords carry them
  assert set(derived) <= {f.name for f in spec.embedded_fields}
  assert set(derived) <= {f.name for f in spec.vocabulary_fields}
  assert not set(derived) & {f.name for f in spec.raw_fields}
  assert [f.name for f in spec.distribution_fields] == ["scenario", "activity"]
  assert spec_lib.spec_from_dict(spec.to_dict()) == spec  # YAML round trip
  assert yaml.safe_load(yaml.safe_dump(spec.to_dict())) == spec.to_dict()


def test_bucket_of_matches_tensorflow_bucketize():
  d = spec_lib.Derived(kind="bucket", source="x", boundaries=(0.1, 18.0, 25.0))
  xs = [-1.0, 0.1, 0.09999999, 17.999, 18.0, 24.5, 25.0, 1e9]
  tf_buckets = tf.raw_ops.Bucketize(input=tf.constant(xs, tf.float32),
                                    boundaries=list(d.boundaries)).numpy()
  assert [d.bucket_of(x) for x in xs] == [str(b) for b in tf_buckets]


@pytest.mark.parametrize("field,match", [
    ({"name": "d", "kind": "categorical", "derived": {"kind": "mean", "source": "item"}},
     "unknown derived kind 'mean'"),
    ({"name": "d", "kind": "numeric", "derived": {"kind": "cross",
                                                  "sources": ["scenario", "item"]}},
     "must be a categorical feature"),
    ({"name": "d", "kind": "categorical", "derived": {"kind": "cross",
                                                      "sources": ["item"]}},
     "two or more"),
    ({"name": "d", "kind": "categorical", "derived": {"kind": "count_bucket",
                                                      "source": "item"}},
     "needs `boundaries`"),
    ({"name": "d", "kind": "categorical", "derived": {
        "kind": "count_bucket", "source": "nope", "boundaries": [1]}},
     "'nope', which is not a field declared before it"),
    ({"name": "d", "kind": "categorical", "derived": {
        "kind": "count_bucket", "source": "price", "boundaries": [1]}},
     "reads a categorical field, 'price' is 'numeric'"),
    ({"name": "d", "kind": "categorical", "derived": {
        "kind": "bucket", "source": "item", "boundaries": [1]}},
     "reads a numeric field"),
    ({"name": "d", "kind": "categorical", "derived": {
        "kind": "count_bucket", "source": "item", "boundaries": [5, 2]}},
     "strictly increasing"),
    ({"name": "d", "kind": "categorical", "derived": {
        "kind": "cross", "sources": ["scenario", "item"], "colour": 1}},
     r"unknown key\(s\) \['colour'\]"),
    ({"name": "d", "kind": "categorical", "default": "x", "derived": {
        "kind": "cross", "sources": ["scenario", "item"]}}, "takes no default"),
])
def test_bad_derived_fields_name_the_problem(field, match):
  with pytest.raises(spec_lib.SpecError, match=match):
    spec_lib.spec_from_dict(_with(field))


def test_derived_source_must_be_fed_and_coarsest_level_raw():
  passthrough = {"name": "sub", "kind": "categorical", "role": "passthrough"}
  cross = {"name": "d", "kind": "categorical",
           "derived": {"kind": "cross", "sources": ["scenario", "sub"]}}
  with pytest.raises(spec_lib.SpecError, match="role is 'passthrough'"):
    spec_lib.spec_from_dict(_with(passthrough, cross))
  coarse = {"name": "d", "kind": "categorical", "distribution_level": 0,
            "derived": {"kind": "cross", "sources": ["scenario", "item"]}}
  d = _with(coarse, change=("scenario", "distribution_level", 1))
  with pytest.raises(spec_lib.SpecError, match="coarsest distribution field"):
    spec_lib.spec_from_dict(d)


@pytest.mark.parametrize("name", ["ali_ccp_raw", "ali_ccp", "movielens_100k"])
def test_shipped_source_specs_load(name):
  spec = spec_lib.load_spec(name)
  assert spec.label.name == "click"
  assert spec.distribution_fields and not spec.distribution_fields[0].is_derived
  assert any(f.derived.kind == spec_lib.COUNT_BUCKET for f in spec.derived_fields)


def test_difference_names_what_differs_between_two_specs():
  """A refused data directory says how its spec differs, not only two fingerprints
  (two specs of one name looked alike in the error)."""
  base = {"name": "s", "features": [{"name": "click", "kind": "numeric", "role": "label"},
                                     {"name": "price", "kind": "numeric"},
                                     {"name": "page", "kind": "categorical"}]}
  a = spec_lib.spec_from_dict(base)
  assert a.difference(spec_lib.spec_from_dict(base)) == ""
  kinds = dict(base, features=base["features"][:1] + [
      {"name": "price", "kind": "categorical"}, base["features"][2]])
  assert a.difference(spec_lib.spec_from_dict(kinds), ("the export", "the data")) == (
      "field 'price': kind 'numeric' in the export, 'categorical' in the data")
  fewer = dict(base, features=base["features"][:2])
  assert a.difference(spec_lib.spec_from_dict(fewer)) == (
      "field 'page' is only in this spec")
  assert spec_lib.spec_from_dict(fewer).difference(a) == "field 'page' is only in the other"
  dims = dict(base, features=base["features"][:2] + [
      {"name": "page", "kind": "categorical", "embedding_dim": 4}])
  assert "field 'page': embedding_dim" in a.difference(spec_lib.spec_from_dict(dims))
  assert a.difference(spec_lib.spec_from_dict(dict(base, name="t"))) == (
      "the name: 's' in this spec, 't' in the other")
