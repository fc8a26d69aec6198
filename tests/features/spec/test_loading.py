"""The spec means what it says (issue 22, item 3): each key has one type, a value of
another type, a duplicate YAML key or an unknown key is a SpecError naming the key,
never a coerced value."""
import dataclasses
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmdn.features import spec as spec_lib

from spec_cases import BASE  # noqa: E402  (the spec these tests vary)


def _yaml(features, **top):
  return yaml.safe_dump(dict({"name": "t", "features": features}, **top), sort_keys=False)


def _with(name, **changes):
  return [dict(f, **changes) if f["name"] == name else dict(f) for f in BASE]


@pytest.mark.parametrize("features,message", [
    (_with("user_id", embedding_dim=True), r"'user_id': embedding_dim must be an "
     r"integer, got True"),
    (_with("scenario", distribution_level=True), r"'scenario': distribution_level must "
     r"be an integer, got True"),
    (_with("price", boundaries="369"), r"'price': boundaries must be a list of finite "
     r"numbers, got '369'"),
    (_with("price", boundaries=[1, True]), r"'price': boundaries must be a list of "
     r"finite numbers, got \[1, True\]"),
    (_with("price", boundaries=[1e39, 1e40]), r"'price': boundaries must be strictly "
     r"increasing \(as float32"),
    (_with("user_id", user_id="false"), r"'user_id': user_id must be true or false, got "
     r"'false'"),
    (_with("user_id", hash_buckets=2.5), r"'user_id': hash_buckets must be an integer"),
    (_with("tags", separator=""), r"'tags': separator must be a non-empty string, got ''"),
    (_with("price", default=True), r"'price': default must be a string or a finite "
     r"number, got True"),
    (_with("price", default="1.5"), r"'price': default must be a number for a numeric "
     r"field"),
    (_with("scenario", default=3), r"'scenario': default must be a string for a "
     r"categorical field"),
    (_with("scenario", kind=["categorical"]), r"'scenario': kind must be a string"),
    (BASE + [{"name": "x", "kind": "categorical",
              "derived": {"kind": "cross", "sources": ["scenario", 3]}}],
     r"'x': derived: sources must be a list of field names"),
    (BASE + [{"name": "x", "kind": "categorical",
              "derived": {"kind": "cross", "sources": "scenario"}}],
     r"'x': derived: sources must be a list of field names .*, got 'scenario'"),
    (BASE + [{"name": "x", "kind": "categorical",
              "derived": {"kind": "cross", "sources": ["scenario", "user_id"],
                          "separator": ""}}],
     r"'x': derived: separator must be a non-empty string"),
])
def test_a_value_of_another_type_is_refused_not_coerced(features, message):
  with pytest.raises(spec_lib.SpecError, match=message):
    spec_lib.spec_from_yaml(_yaml(features), source="t.yaml")


def test_a_key_given_twice_is_refused_with_both_lines():
  text = ("name: t\nfeatures:\n"
          "  - {name: click, kind: numeric, role: label}\n"
          "  - {name: scenario, kind: numeric, kind: categorical}\n"
          "  - name: user_id\n    kind: categorical\n    kind: numeric\n")
  with pytest.raises(spec_lib.SpecError, match=r"^t.yaml: duplicate key 'kind' \(line 4 "
                     r"and line 4\): a key is given once"):
    spec_lib.spec_from_yaml(text, source="t.yaml")
  with pytest.raises(spec_lib.SpecError, match=r"duplicate key 'kind' \(line 6 and line 7"):
    spec_lib.spec_from_yaml(text.replace("kind: numeric, kind: categorical",
                                         "kind: categorical"), source="t.yaml")
  with pytest.raises(spec_lib.SpecError, match=r"duplicate key 'name' \(line 1 and line 2"):
    spec_lib.spec_from_yaml("name: a\nname: b\nfeatures: []\n", source="t.yaml")


def test_load_spec_refuses_a_duplicate_key_naming_the_file(tmp_path):
  path = tmp_path / "dup.yaml"
  path.write_text(_yaml(BASE) + "name: again\n")
  with pytest.raises(spec_lib.SpecError, match=f"^{path}: duplicate key 'name'"):
    spec_lib.load_spec(str(path))


@pytest.mark.parametrize("top,message", [
    ({"featurs": []}, r"unknown key\(s\) \['featurs'\] \('featurs': did you mean "
     r"'features'\?\); allowed: \['features', 'name'\]"),
    ({"nmae": "x"}, r"unknown key\(s\) \['nmae'\] \('nmae': did you mean 'name'\?\)"),
    ({"owner": "me"}, r"unknown key\(s\) \['owner'\]; allowed"),
])
def test_unknown_top_level_keys_are_refused_with_the_closest_key(top, message):
  with pytest.raises(spec_lib.SpecError, match=r"^t.yaml: " + message):
    spec_lib.spec_from_yaml(_yaml(BASE, **top), source="t.yaml")


def test_unknown_field_key_names_the_closest_known_key():
  with pytest.raises(spec_lib.SpecError, match=r"'user_id': unknown key\(s\) \['embeding_"
                     r"dim'\] \('embeding_dim': did you mean 'embedding_dim'\?\)"):
    spec_lib.spec_from_yaml(_yaml(_with("user_id", embeding_dim=4)), source="t.yaml")


def test_top_level_name_must_be_a_string():
  with pytest.raises(spec_lib.SpecError, match=r"t.yaml: name must be a string, got 7"):
    spec_lib.spec_from_yaml(_yaml(BASE).replace("name: t", "name: 7"), source="t.yaml")


# --- The property: any generated spec is exactly what was written, or a SpecError ------
_KEYS = [f.name for f in dataclasses.fields(spec_lib.Feature) if f.name != "derived"]
scalars = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers()
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["", "369", "true", "false", "1", "numeric", "categorical",
                              "feature", "label", "oracle", "passthrough",
                              "multi_categorical", "|", ";", "user", "0x10", "1_000"])
           | st.text(max_size=6))
values = scalars | st.lists(scalars, max_size=4) | st.dictionaries(
    st.sampled_from(["a", "kind"]), scalars, max_size=2)
SLOW_OK = settings(max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow])


def _as_written(key, written, loaded):
  """The loaded value is the written one: same type, same value (a boundaries list is
  kept as a tuple of its numbers)."""
  if key == "boundaries":
    return (isinstance(written, list) and isinstance(loaded, tuple)
            and all(type(w) in (int, float) for w in written)
            and [float(w) for w in written] == list(loaded))
  if isinstance(written, float) and math.isnan(written):
    return False  # no key takes a NaN
  return type(loaded) is type(written) and loaded == written


@SLOW_OK
@given(st.integers(0, len(BASE) - 1), st.sampled_from(_KEYS + ["embeding_dim", "kinds"]),
       values)
def test_any_spec_is_what_was_written_or_a_spec_error_naming_the_key(index, key, value):
  features = [dict(f) for f in BASE]
  features[index][key] = value
  text = _yaml(features)
  try:
    spec = spec_lib.spec_from_yaml(text, source="gen.yaml")
  except spec_lib.SpecError as e:
    assert str(e).startswith("gen.yaml: "), str(e)
    assert key in str(e), (key, value, str(e))
    return
  loaded = yaml.safe_load(text)["features"][index][key]  # what YAML itself holds
  feature = spec.features[index]
  assert key in _KEYS, (key, "an unknown key was accepted")
  assert _as_written(key, loaded, getattr(feature, key)), (key, value,
                                                           getattr(feature, key))
  assert spec_lib.spec_from_yaml(yaml.safe_dump(spec.to_dict())).features == spec.features


@SLOW_OK
@given(st.integers(0, len(BASE) - 1), st.sampled_from(_KEYS),
       st.integers(0, 9) | st.sampled_from(["a", "numeric", "true"]))
def test_any_key_given_twice_is_a_spec_error_naming_it(index, key, value):
  lines = ["name: t", "features:"]
  for i, f in enumerate(BASE):
    entries = [f"{k}: {json.dumps(v)}" for k, v in f.items()]
    if i == index:
      entries.append(f"{key}: {json.dumps(value)}")
      if key not in f:
        entries.append(f"{key}: {json.dumps(value)}")
    lines.append("  - {" + ", ".join(entries) + "}")
  with pytest.raises(spec_lib.SpecError, match=f"duplicate key '{key}'"):
    spec_lib.spec_from_yaml("\n".join(lines) + "\n", source="gen.yaml")
