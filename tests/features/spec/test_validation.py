"""Spec validation: every rule has a case that breaks it, naming field and value."""
import pytest

from hmdn.features import spec as spec_lib

from spec_cases import BASE, _spec  # noqa: E402  (the spec these tests vary)


def _with(name, **changes):
  return [dict(f, **changes) if f["name"] == name else dict(f) for f in BASE]


def test_base_spec_is_valid():
  assert _spec(BASE).names == [f["name"] for f in BASE]


def test_implicit_view_reads_the_marked_fields_else_every_embedded_field():
  assert [f.name for f in _spec(BASE).implicit_view_fields] == [
      "scenario", "user_id", "price", "tags"]
  marked = _spec(_with("user_id", implicit_view=True))
  assert [f.name for f in marked.implicit_view_fields] == ["user_id"]
  assert spec_lib.spec_from_dict(marked.to_dict()).features == marked.features


@pytest.mark.parametrize("features,message", [
    (BASE + [{"name": "other_user", "kind": "categorical", "user_id": True}],
     r"at most one user_id field, found \['user_id', 'other_user'\]"),
    (_with("user_id", vocab_min_count=0), r"'user_id': vocab_min_count must be >= 1, got 0"),
    (_with("user_id", hash_buckets=-1), r"'user_id': hash_buckets must be >= 0, got -1"),
    (_with("scenario", role="passthrough"),
     r"'scenario': a distribution field must have role 'feature', got 'passthrough'"),
    (_with("scenario", distribution_level=-1),
     r"'scenario': distribution_level must be an integer >= 0, got -1"),
    ([{"name": "click", "kind": "numeric", "role": "label"},
      {"name": "note", "kind": "categorical", "role": "passthrough"}],
     r"the spec has no model input"),
    (BASE + [{"name": "scenario_x_user", "kind": "categorical",
              "derived": {"kind": "cross", "sources": ["scenario", "user_id"]}},
             {"name": "cross_count", "kind": "categorical",
              "derived": {"kind": "count_bucket", "source": "scenario_x_user",
                          "boundaries": [1, 10]}}],
     r"'cross_count': count_bucket source 'scenario_x_user' must be a raw field"),
    (_with("user_id", implicit_view="yes"),
     r"'user_id': implicit_view must be true or false, got 'yes'"),
    (BASE + [{"name": "note", "kind": "categorical", "role": "passthrough",
              "implicit_view": True}],
     r"'note': implicit_view marks a model feature, but the role is 'passthrough'"),
])
def test_spec_rule_violations_name_the_field_and_value(features, message):
  with pytest.raises(spec_lib.SpecError, match=message):
    _spec(features)


# --- mode (a per-key profile): every bad `source` / `of` is refused, naming the field -----
DEVICE = {"name": "device", "kind": "categorical"}
HOUR_BUCKET = {"name": "hour_bucket", "kind": "categorical",
               "derived": {"kind": "bucket", "source": "price", "boundaries": [1, 2]}}


def _mode(**derived):
  return {"name": "top", "kind": "categorical", "derived": dict({"kind": "mode"}, **derived)}


@pytest.mark.parametrize("features,message", [
    (BASE + [DEVICE, _mode(source="user_id")], r"'top': a mode needs `of`"),
    (BASE + [DEVICE, _mode(source="user_id", of="nowhere")],
     r"'top': mode of 'nowhere', which is not a field declared before it"),
    (BASE + [_mode(source="user_id", of="device"), DEVICE],
     r"'top': mode of 'device', which is not a field declared before it"),
    (BASE + [_mode(source="user_id", of="user_id")],
     r"'top': a mode's `of` 'user_id' must differ from its source"),
    (BASE + [_mode(source="user_id", of="tags")],
     r"'top': a mode's `of` must be a categorical feature, 'tags' has kind "
     r"'multi_categorical'"),
    (BASE + [_mode(source="tags", of="scenario")],
     r"'top': a mode reads a categorical field, 'tags' is 'multi_categorical'"),
    (BASE + [_mode(source="price", of="scenario")],
     r"'top': a mode reads a categorical field, 'price' is 'numeric'"),
    (BASE + [_mode(source="user_id", of="price")],
     r"'top': a mode's `of` must be a categorical feature, 'price' has kind 'numeric'"),
    (BASE + [HOUR_BUCKET, _mode(source="hour_bucket", of="scenario")],
     r"'top': mode source 'hour_bucket' must be a raw field"),
    (BASE + [{"name": "activity", "kind": "categorical",
              "derived": {"kind": "count_bucket", "source": "user_id",
                          "boundaries": [2]}},
             _mode(source="user_id", of="activity")],
     r"'top': a mode's `of` 'activity' must be a raw field or a bucket/cross of raw "
     r"fields; it reads 'activity', a count_bucket"),
    (BASE + [DEVICE, {"name": "top_device", "kind": "categorical",
                      "derived": {"kind": "mode", "source": "user_id", "of": "device"}},
             {"name": "cross", "kind": "categorical",
              "derived": {"kind": "cross", "sources": ["scenario", "top_device"]}},
             _mode(source="user_id", of="cross")],
     r"'top': a mode's `of` 'cross' must be a raw field or a bucket/cross of raw "
     r"fields; it reads 'top_device', a mode"),
    (BASE + [DEVICE, _mode(of="device")], r"'top': a mode needs one `source` field"),
    (BASE + [DEVICE, {"name": "d", "kind": "categorical", "derived": {
        "kind": "cross", "sources": ["scenario", "device"], "of": "device"}}],
     r"'d': `of` is for a mode or a share, not a cross \(of='device'\)"),
    (BASE + [DEVICE, _mode(source="user_id", of="device", boundaries=[1])],
     r"'top': boundaries are for a count_bucket, bucket or share, not a mode "
     r"\(boundaries=\[1.0\]\)"),
])
def test_bad_mode_fields_are_refused_naming_the_field(features, message):
  with pytest.raises(spec_lib.SpecError, match=message):
    _spec(features)


def test_mode_of_a_raw_field_or_a_row_wise_field_is_accepted_and_round_trips():
  features = BASE + [DEVICE, HOUR_BUCKET,
                     {"name": "device_x_bucket", "kind": "categorical",
                      "derived": {"kind": "cross", "sources": ["device", "hour_bucket"]}},
                     _mode(source="user_id", of="device"),
                     dict(_mode(source="user_id", of="device_x_bucket"), name="top2")]
  spec = _spec(features)
  assert spec["top"].derived == spec_lib.Derived(kind="mode", source="user_id",
                                                 of="device")
  assert spec["top"].derived.has_table and spec["top"].derived.table_default == ""
  assert not {"top", "top2"} & {f.name for f in spec.model_inputs}
  assert {"top", "top2"} <= {f.name for f in spec.vocabulary_fields}
  as_dict = spec.to_dict()
  assert as_dict["features"][-2]["derived"] == {"kind": "mode", "source": "user_id",
                                                "of": "device"}
  assert "of" not in as_dict["features"][len(BASE) + 1]["derived"]  # a default: left out
  assert spec_lib.spec_from_dict(as_dict).features == spec.features


# --- share (a per-key histogram entry): `of` as for a mode, `value`, `boundaries` ------
EDGES = [0.1, 0.5]


def _share(**derived):
  return {"name": "top", "kind": "categorical",
          "derived": dict({"kind": "share", "source": "user_id", "of": "device",
                           "value": "ios", "boundaries": EDGES}, **derived)}


@pytest.mark.parametrize("features,message", [
    (BASE + [DEVICE, _share(value="")], r"'top': a share needs `value`: the value of "
     r"'device'"),
    (BASE + [DEVICE, _share(value=3)], r"'top': a share's `value` must be a string "
     r"\(quote it in YAML\), got 3"),
    (BASE + [DEVICE, HOUR_BUCKET, _share(of="hour_bucket", value="3")],
     r"'top': share of 'hour_bucket' value '3', which is not one of its buckets "
     r"\['0', '1', '2'\]"),
    (BASE + [DEVICE, _share(boundaries=[])], r"'top': a share needs `boundaries`"),
    (BASE + [DEVICE, _share(boundaries=["a", 0.5])],
     r"'top': derived: boundaries must be numbers.*'a'"),
    (BASE + [DEVICE, _share(boundaries=0.5)],
     r"'top': derived: boundaries must be a list of numbers, got 0.5"),
    (BASE + [DEVICE, _share(boundaries=[True])],
     r"'top': derived: boundaries must be a list of numbers, got \[True\]"),
    (BASE + [DEVICE, _share(boundaries=[0.5, 0.1])],
     r"'top': boundaries must be strictly increasing .*, got \[0.5, 0.1\]"),
    (BASE + [DEVICE, _share(boundaries=[0.1, 0.1])],
     r"'top': boundaries must be strictly increasing .*, got \[0.1, 0.1\]"),
    (BASE + [DEVICE, _share(boundaries=[0.5, 1])],
     r"'top': a share's boundaries must lie in \(0, 1\).*got \[0.5, 1.0\]"),
    (BASE + [DEVICE, _share(boundaries=[0, 0.5])],
     r"'top': a share's boundaries must lie in \(0, 1\).*got \[0.0, 0.5\]"),
    (BASE + [DEVICE, _share(boundaries=[float("nan")])],
     r"'top': boundaries must be strictly increasing .*got \[nan\]"),
    (BASE + [DEVICE, _share(of="")], r"'top': a share needs `of`: the field whose "
     r"share of `value`"),
    (BASE + [DEVICE, _share(of="user_id")],
     r"'top': a share's `of` 'user_id' must differ from its source"),
    (BASE + [DEVICE, _share(of="nowhere")],
     r"'top': share of 'nowhere', which is not a field declared before it"),
    (BASE + [DEVICE, _share(of="price", value="1")],
     r"'top': a share's `of` must be a categorical feature, 'price' has kind 'numeric'"),
    (BASE + [DEVICE, _share(source="price")],
     r"'top': a share reads a categorical field, 'price' is 'numeric'"),
    (BASE + [DEVICE, HOUR_BUCKET, _share(source="hour_bucket")],
     r"'top': share source 'hour_bucket' must be a raw field"),
    (BASE + [DEVICE, {"name": "activity", "kind": "categorical",
                      "derived": {"kind": "count_bucket", "source": "user_id",
                                  "boundaries": [2]}},
             _share(of="activity", value="1")],
     r"'top': a share's `of` 'activity' must be a raw field or a bucket/cross of raw "
     r"fields; it reads 'activity', a count_bucket"),
    (BASE + [DEVICE, _mode(source="user_id", of="device", value="ios")],
     r"'top': `value` is for a share, not a mode \(value='ios'\)"),
    (BASE + [DEVICE, {"name": "d", "kind": "categorical", "derived": {
        "kind": "count_bucket", "source": "user_id", "boundaries": [2], "value": "x"}}],
     r"'d': `value` is for a share, not a count_bucket \(value='x'\)"),
])
def test_bad_share_fields_are_refused_naming_the_field_and_value(features, message):
  with pytest.raises(spec_lib.SpecError, match=message):
    _spec(features)


def test_share_of_a_raw_or_bucket_field_is_a_table_field_and_round_trips():
  features = BASE + [DEVICE, HOUR_BUCKET, _share(),
                     dict(_share(of="hour_bucket", value="2"), name="late")]
  spec = _spec(features)
  d = spec["top"].derived
  assert d == spec_lib.Derived(kind="share", source="user_id", of="device",
                               value="ios", boundaries=(0.1, 0.5))
  assert d.has_table and d.table_default == ""  # unseen: OOV, not the bucket of 0
  assert [d.bucket_of(x) for x in (0.0, 0.1, 0.3, 0.5, 1.0)] == ["0", "1", "1", "2",
                                                                  "2"]
  assert not {"top", "late"} & {f.name for f in spec.model_inputs}
  assert {"top", "late"} <= {f.name for f in spec.vocabulary_fields}
  assert spec.to_dict()["features"][-1]["derived"] == {
      "kind": "share", "source": "user_id", "boundaries": [0.1, 0.5],
      "of": "hour_bucket", "value": "2"}
  assert spec_lib.spec_from_dict(spec.to_dict()).features == spec.features


@pytest.mark.parametrize("name", ["../../x", "a/b", "has space", "tab\tname", "dot.ted",
                                  "_private", "", "x" * 129, "ünï", "new\nline"])
def test_unsafe_or_unusable_field_names_are_rejected(name):
  features = BASE + [{"name": name, "kind": "categorical"}]
  with pytest.raises(spec_lib.SpecError) as e:
    _spec(features)
  assert repr(name) in str(e.value) or "has no name" in str(e.value)


@pytest.mark.parametrize("name", ["101", "109_14", "D508", "item_id", "x" * 128])
def test_usual_field_names_are_accepted(name):
  assert name in _spec(BASE + [{"name": name, "kind": "categorical"}]).names


@pytest.mark.parametrize("name,role", [("probability", "label"), ("codes", "passthrough"),
                                       ("probability", "feature")])
def test_a_field_named_like_a_model_output_is_refused(name, role):
  """Evaluation reads fields and outputs as one table: a label named "probability"
  would be scored against itself."""
  features = [f for f in BASE if f["name"] != name] + [
      {"name": name, "kind": "numeric" if role == "label" else "categorical",
       "role": role}]
  if role == "label":  # the only label
    features = [f for f in features if f.get("role") != "label" or f["name"] == name]
  with pytest.raises(spec_lib.SpecError,
                     match=f"field '{name}': the name of a model output"):
    _spec(features)
  assert "probability_ctr" in _spec(BASE + [
      {"name": "probability_ctr", "kind": "numeric"}]).names  # one task: no such output
