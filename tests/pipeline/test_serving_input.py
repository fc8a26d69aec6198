"""Serving input that does not fit the spec: `hmdn predict` rejects it before TensorFlow
sees it (RequestError naming the instance and the feature), and the exported signatures
reject non-finite numbers themselves, for clients that call TF Serving directly.

The parser is checked on generated requests (hypothesis): any body either becomes
well-formed tensors for every instance or a RequestError; no other exception escapes.
"""
import base64
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, PreprocessedData
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data, export, serving, serving_request, train
from hmdn.pipeline.serving_request import RequestError

SPEC = spec_lib.spec_from_dict({"name": "t", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "page", "kind": "categorical", "default": "home"},
    {"name": "price", "kind": "numeric"},
    {"name": "score", "kind": "numeric", "default": 0.5},
    {"name": "tags", "kind": "multi_categorical", "default": ""},
    {"name": "scenario_x_page", "kind": "categorical",
     "derived": {"kind": "cross", "sources": ["scenario", "page"]}}]})
INPUTS = [f.name for f in SPEC.model_inputs]
GOOD = {"scenario": "s0", "page": "cart", "price": 3.5, "score": 1, "tags": ["a", "b"]}


def _example(values):
  example = tf.train.Example()
  for name, value in values.items():
    feature = example.features.feature[name]
    if isinstance(value, float):
      feature.float_list.value.append(value)
    elif isinstance(value, list):
      feature.bytes_list.value.extend(v.encode() for v in value)
    else:
      feature.bytes_list.value.append(value.encode())
  return example.SerializeToString()


def _b64(serialized):
  return {"examples": {"b64": base64.b64encode(serialized).decode()}}


def _inputs(request, spec=SPEC):
  return serving_request.signature_inputs(
      spec, serving_request.parse_request(json.dumps(request)))


# --- Each bad input: one RequestError naming the instance and the feature ----------------
@pytest.mark.parametrize("value,reason", [
    (float("nan"), "not a finite number"), ("nan", "must be a number"),
    (True, "must be a number"), (1e39, "outside the float32 range"),
    (float("inf"), "not a finite number"), ({"v": 1}, "must be a number"),
    ([1.0], "must be a number"), ("3.5", "must be a number"),
    (10 ** 400, "price"),
])
def test_bad_numeric_values_name_the_feature_and_instance(value, reason):
  request = {"signature_name": "predict", "instances": [GOOD, dict(GOOD, price=value)]}
  with pytest.raises(RequestError) as e:
    _inputs(request)
  assert "instances[1]" in str(e.value) and "'price'" in str(e.value)
  assert reason in str(e.value)


@pytest.mark.parametrize("change,message", [
    ({"scenario": {"a": 1}}, "'scenario' must be one value"),
    ({"scenario": ["s0"]}, "'scenario' must be one value"),
    ({"scenario": False}, "'scenario': boolean"),
    ({"tags": 5}, "'tags' must be a list"),
    ({"tags": [True]}, "'tags'"), ({"tags": [["a"]]}, "'tags'"),
    ({"tags": {"a": 1}}, "'tags' must be a list"),
    ({"scenario": "\ud800"}, "'scenario'"),
    ({"colour": "red"}, "unknown feature(s) ['colour']"),
    ({"scenario_x_page": "s0_x_cart"}, "unknown feature(s) ['scenario_x_page']"),
    ({"scenario": None}, "required feature 'scenario' is missing"),
    ({"scenario": ""}, "'scenario': empty value"),
    ({"page": "x" * (spec_lib.MAX_CELL_CHARS + 1)}, "'page'"),
])
def test_bad_raw_values_name_the_feature_and_instance(change, message):
  with pytest.raises(RequestError) as e:
    _inputs({"signature_name": "predict", "instances": [dict(GOOD, **change)]})
  assert message in str(e.value) and "instances[0]" in str(e.value)


def test_a_missing_required_feature_names_it():
  instance = dict(GOOD)
  del instance["price"]
  with pytest.raises(RequestError, match=r"instances\[0\]: required feature 'price'"):
    _inputs({"signature_name": "predict", "instances": [instance]})


@pytest.mark.parametrize("body,message", [
    ("{\"instances\": [", "not a JSON request"), ("[1, 2]", "got a JSON list"),
    (b"\xff\xfe", "not a JSON request"), ("{}", "no \"instances\""),
    ("{\"instances\": []}", "\"instances\" is empty"),
    ("{\"instances\": {}}", "\"instances\" must be a list"),
    ("{\"instances\": [1], \"inputs\": {}}", "unknown key(s) ['inputs']"),
    ("{\"instances\": [1], \"signature_name\": 7}", "signature_name must be a string"),
    ("[" * 100000 + "]" * 100000, "not a JSON request"),
    ("{\"instances\": [1], \"instances\": [2]}", "gives key 'instances' 2 times"),
    ("{\"instances\": [{\"a\": 1, \"a\": 2}]}", "gives key 'a' 2 times"),
])
def test_bad_bodies_are_one_clear_error(body, message):
  with pytest.raises(RequestError) as e:
    serving_request.parse_request(body)
  assert message in str(e.value)


@pytest.mark.parametrize("instance,message", [
    ({"examples": {"b64": "not base64!"}}, "not valid base64"),
    ({"examples": {"b64": "YWJj"}}, "not a serialized tf.Example"),
    ({"examples": {"b64": 12}}, "must be a base64 string"),
    ({"examples": "x"}, "serialized tf.Example is written"),
    ({"b64": "é"}, "not valid base64"),
    (_b64(b""), "required feature 'scenario' is missing"),
])
def test_bad_serialized_examples(instance, message):
  with pytest.raises(RequestError) as e:
    _inputs({"instances": [_b64(_example({"scenario": "s", "price": 1.0})), instance]})
  assert "instances[1]" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("values,message", [
    ({"scenario": "s", "price": float("nan")}, "'price': value nan is not a finite"),
    ({"scenario": "s", "price": 1e39}, "'price': value inf"),  # float32 in the proto
    ({"scenario": "s", "price": "3"}, "'price' is a bytes_list"),
    ({"scenario": ["a", "b"], "price": 1.0}, "'scenario' has 2 values"),
    ({"scenario": "", "price": 1.0}, "'scenario': empty value"),
])
def test_bad_values_inside_examples_name_the_feature(values, message):
  for name in ("serving_default", "classify"):
    with pytest.raises(RequestError) as e:
      _inputs({"signature_name": name, "instances": [_b64(_example(values))]})
    assert "instances[0]" in str(e.value) and message in str(e.value)


def test_good_requests_become_tensors():
  name, tensors = _inputs({"signature_name": "predict", "instances": [
      GOOD, {"scenario": 7, "price": -2, "tags": "x|y|z"}]})
  assert name == "predict" and sorted(tensors) == sorted(INPUTS)
  assert tensors["scenario"].tolist() == ["s0", "7"]
  assert tensors["page"].tolist() == ["cart", "home"]
  assert tensors["price"].dtype == np.float32 and tensors["price"].tolist() == [3.5, -2]
  assert tensors["tags"].tolist() == [["a", "b", ""], ["x", "y", "z"]]
  name, tensors = _inputs({"instances": [_b64(_example({"scenario": "s",
                                                        "price": 2.0}))]})
  assert name == "serving_default" and tensors["examples"].shape == (1,)


# --- Property: any body -> tensors for every instance, or a RequestError -----------------
_scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) |
            st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) |
            st.sampled_from(["nan", "inf", "1e39", "", "a|b", "3.5", "-0"]))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) |
                     st.dictionaries(st.text(max_size=4), inner, max_size=3),
                     max_leaves=6)
_valid_value = {
    "scenario": st.text(min_size=1, max_size=6).filter(str.strip) | st.integers(),
    "page": st.text(max_size=6) | st.none(),
    "price": st.floats(-1e30, 1e30) | st.integers(-10 ** 6, 10 ** 6),
    "score": st.floats(-1e3, 1e3) | st.none(),
    "tags": st.lists(st.text(max_size=4), max_size=3) | st.text(max_size=8)}
_names = st.sampled_from(INPUTS + ["click", "scenario_x_page", "colour", ""])


@st.composite
def _instance(draw):
  """A valid instance, then a few features replaced by anything, added or removed."""
  inst = {name: draw(_valid_value[name]) for name in INPUTS}
  for _ in range(draw(st.integers(0, 2))):
    name = draw(_names)
    action = draw(st.sampled_from(["set", "drop"]))
    if action == "drop":
      inst.pop(name, None)
    else:
      inst[name] = draw(_json)
  return inst


@st.composite
def _example_instance(draw):
  choice = draw(st.integers(0, 3))
  if choice == 0:  # random base64-ish text
    return {"examples": {"b64": draw(st.text(max_size=16))}}
  if choice == 1:  # random bytes, correctly encoded
    return _b64(draw(st.binary(max_size=24)))
  values = {"scenario": draw(st.text(max_size=4)),
            "price": draw(st.floats(width=32)),
            "tags": draw(st.lists(st.text(max_size=3), max_size=2))}
  if choice == 3:
    del values[draw(st.sampled_from(sorted(values)))]
  return _b64(_example(values))


_requests = st.one_of(
    st.fixed_dictionaries({"signature_name": st.just("predict"),
                           "instances": st.lists(_instance(), max_size=4)}),
    st.fixed_dictionaries({"signature_name": st.sampled_from(["serving_default",
                                                              "classify"]),
                           "instances": st.lists(_example_instance(), max_size=4)}),
    st.fixed_dictionaries({"instances": st.lists(_json, max_size=3)}),
    _json)


def _check_well_formed(name, tensors, request):
  n = len(request["instances"])
  if name == "predict":
    assert sorted(tensors) == sorted(INPUTS)
    for f in SPEC.model_inputs:
      value = tensors[f.name]
      assert value.shape[0] == n
      if f.kind == spec_lib.NUMERIC:
        assert value.dtype == np.float32 and np.isfinite(value).all()
      else:
        assert value.ndim == (2 if f.kind == spec_lib.MULTI_CATEGORICAL else 1)
        for v in value.ravel():
          assert isinstance(v, str) and v.encode("utf-8") is not None
      tf.constant(value)  # a tensor the signature takes
  else:
    assert list(tensors) == [serving_request.EXAMPLE_INPUTS[name]]
    assert tensors[serving_request.EXAMPLE_INPUTS[name]].shape == (n,)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(request=_requests, as_text=st.booleans())
def test_any_request_is_tensors_or_a_request_error(request, as_text):
  body = json.dumps(request)  # NaN and Infinity are written as JSON allows in Python
  try:
    checked = serving_request.parse_request(body if as_text else body.encode())
    name, tensors = serving_request.signature_inputs(SPEC, checked)
  except RequestError as e:
    assert str(e).strip()
    return
  _check_well_formed(name, tensors, checked)
  if name == "predict":  # every accepted value is the instance's, typed by the spec
    for i, inst in enumerate(checked["instances"]):
      for f in SPEC.model_inputs:
        if f.kind == spec_lib.NUMERIC and inst.get(f.name) is not None:
          assert tensors[f.name][i] == np.float32(inst[f.name])


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64) | st.text(max_size=64))
def test_any_bytes_are_a_request_or_a_request_error(body):
  try:
    checked = serving_request.parse_request(body)
    serving_request.signature_inputs(SPEC, checked)
  except RequestError as e:
    assert str(e).strip()


# --- The exported signatures check finiteness themselves ---------------------------------
@pytest.fixture(scope="module")
def exported(planted_data_dir, tmp_path_factory):
  """One small (untrained) export for the module: the checks do not depend on weights."""
  spec = PreprocessedData(planted_data_dir).spec
  model = train.build_model(planted_data_dir, ModelConfig(name="dnn", output_dim=8))
  rows = data.first_records(planted_data_dir, EVAL, 3)
  root = str(tmp_path_factory.mktemp("serving_export"))
  version = export.export(model, spec, root)
  return tf.saved_model.load(version), spec, rows, version


def _with_price(row, value):
  example = tf.train.Example.FromString(row)
  example.features.feature["price"].float_list.value[:] = [value]
  return example.SerializeToString()


@pytest.mark.parametrize("value,shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                         (-1e39, "-inf")])
def test_example_signatures_reject_non_finite_numbers(exported, value, shown):
  loaded, _, rows, _ = exported
  ok = loaded.signatures["serving_default"](examples=tf.constant(rows))["probability"]
  assert np.isfinite(ok.numpy()).all()
  bad = tf.constant([rows[0], rows[1], _with_price(rows[2], value)])
  for name, arg in (("serving_default", "examples"), ("classify", "inputs")):
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
      loaded.signatures[name](**{arg: bad})
    assert (f"feature price is not a finite number at instance 2: {shown}"
            in e.value.message)
    assert serving._node_reason(e.value) == (
        f"feature price is not a finite number at instance 2: {shown}")


def test_a_one_task_baseline_answers_only_its_probability(exported):
  signatures = exported[0].signatures
  for name in ("serving_default", "predict"):
    assert sorted(signatures[name].structured_outputs) == ["probability"]
  assert sorted(signatures["classify"].structured_outputs) == ["classes", "scores"]


def test_raw_tensor_signature_rejects_non_finite_numbers(exported):
  loaded, spec, rows, _ = exported
  instances = serving_request.instances_from_examples(spec, rows, raw=True)
  tensors = serving_request.tensors_from_instances(spec, instances)
  predict = loaded.signatures["predict"]
  assert np.isfinite(predict(**{k: tf.constant(v) for k, v in tensors.items()})
                     ["probability"].numpy()).all()
  for feature in [f.name for f in spec.model_inputs if f.kind == spec_lib.NUMERIC]:
    for value in (float("nan"), float("inf"), float("-inf")):
      bad = dict(tensors)
      bad[feature] = tensors[feature].copy()
      bad[feature][1] = value
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match=f"feature {feature} is not a finite number at "
                               "instance 1"):
        predict(**{k: tf.constant(v) for k, v in bad.items()})


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["instances"][1].update(price=float("nan")),
     "instances[1]: field 'price': value nan is not a finite number"),
    (lambda r: r["instances"][0].update(price=1e39), "outside the float32 range"),
    (lambda r: r["instances"][2].update(price=True), "instances[2]: feature 'price'"),
    (lambda r: r.update(instances=[]), "\"instances\" is empty"),
])
def test_hmdn_predict_checks_before_tensorflow(exported, tmp_path, edit, message):
  _, spec, rows, version = exported
  request = {"signature_name": "predict",
             "instances": serving_request.instances_from_examples(spec, rows, raw=True)}
  edit(request)
  path = tmp_path / "request.json"
  path.write_text(json.dumps(request))
  with pytest.raises(RequestError) as e:
    serving.predict(version, str(path))
  assert message in str(e.value) and str(path) in str(e.value)
  assert "node" not in str(e.value).lower()


def test_hmdn_predict_bad_base64_and_a_good_request(exported, tmp_path):
  _, spec, rows, version = exported
  good = serving_request.instances_from_examples(spec, rows, raw=False)
  path = tmp_path / "request.json"
  path.write_text(json.dumps({"instances": good + [{"examples": {"b64": "%%%"}}]}))
  with pytest.raises(RequestError, match=r"instances\[3\]: \"b64\" is not valid"):
    serving.predict(version, str(path))
  path.write_text(json.dumps({"instances": good}))
  predictions = serving.predict(version, str(path))["predictions"]
  assert len(predictions) == 3
  assert all(0 < p["probability"] < 1 and math.isfinite(p["probability"])
             for p in predictions)
