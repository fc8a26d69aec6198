"""Requests in TF Serving's REST predict format, turned into signature inputs.

`{"signature_name": "predict", "instances": [{"scenario": "s0", "price": 3.5, ...}]}`
feeds the raw-tensor signature; `{"instances": [{"examples": {"b64": "..."}}]}` feeds
`serving_default` (serialized tf.Example), exactly as TF Serving decodes them.
A missing optional feature takes its spec default. Everything else that does not fit the
spec (a missing required or an unknown feature, a wrong type, NaN, inf, a number beyond
float32, malformed base64, no instances) is a RequestError naming the instance and the
feature, raised before TensorFlow sees the request: the signatures check finiteness too
(pipeline/export.py), but their error is a node message, not a sentence.
"""
import base64
import binascii
import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.example import example_pb2

from hmdn.features import spec as spec_lib
from hmdn.features.fileio import RepeatedKeyError, object_once, short


class RequestError(ValueError):
  """A request that does not fit the signature; the message names the feature."""


PREDICT = "predict"  # raw named tensors
SERVING_DEFAULT = "serving_default"  # {"examples": serialized tf.Example}
CLASSIFY = "classify"  # {"inputs": serialized tf.Example}
# The input name of each signature that takes serialized tf.Examples.
EXAMPLE_INPUTS = {SERVING_DEFAULT: "examples", CLASSIFY: "inputs"}
SIGNATURES = (SERVING_DEFAULT, PREDICT, CLASSIFY)
# Kinds sent as a list of strings (a sequence's order kept, most recent last).
_LISTS = (spec_lib.MULTI_CATEGORICAL, spec_lib.SEQUENCE)


def parse_request(body, source: str = "request") -> Dict[str, Any]:
  """A request body (JSON text or bytes) -> the request dict, its shape checked."""
  try:
    request = json.loads(body, object_pairs_hook=object_once)
  except RepeatedKeyError as e:
    raise RequestError(f"{source}: {e}")
  except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
    raise RequestError(f"{source}: not a JSON request ({short(str(e))})")
  return check_request(request, source)


def check_request(request: Any, source: str = "request") -> Dict[str, Any]:
  """A decoded request must be {"signature_name": name, "instances": [one or more]}."""
  expected = ("expected {\"signature_name\": ..., \"instances\": [...]} as in TF "
              "Serving's REST predict API")
  if not isinstance(request, dict):
    raise RequestError(f"{source}: {expected}, got a JSON {type(request).__name__}")
  if "instances" not in request:
    raise RequestError(f"{source}: no \"instances\"; {expected}")
  instances = request["instances"]
  if not isinstance(instances, list):
    raise RequestError(f"{source}: \"instances\" must be a list, got "
                       f"{short(instances)}")
  if not instances:
    raise RequestError(f"{source}: \"instances\" is empty; a request needs at least "
                       "one instance")
  name = request.get("signature_name", SERVING_DEFAULT)
  if not isinstance(name, str):
    raise RequestError(f"{source}: signature_name must be a string, got {short(name)}")
  unknown = sorted(set(request) - {"signature_name", "instances"})
  if unknown:
    raise RequestError(f"{source}: unknown key(s) {unknown}; {expected}")
  return request


def load_request(path: str) -> Dict[str, Any]:
  try:
    with open(path, "rb") as f:
      body = f.read()
  except OSError as e:
    raise RequestError(f"{path}: cannot read the request ({e.strerror or e})")
  return parse_request(body, source=path)


def signature_inputs(spec: spec_lib.FeatureSpec, request: Mapping[str, Any]
                     ) -> Tuple[str, Dict[str, np.ndarray]]:
  """A checked request -> (signature name, its inputs as numpy arrays)."""
  name = request.get("signature_name", SERVING_DEFAULT)
  if name in EXAMPLE_INPUTS:
    examples = examples_from_instances(request["instances"], spec)
    return name, {EXAMPLE_INPUTS[name]: np.array(examples, dtype=object)}
  if name == PREDICT:
    return name, tensors_from_instances(spec, request["instances"])
  raise RequestError(f"signature_name {name!r} is not one of {list(SIGNATURES)}")


# --- serving_default / classify: serialized tf.Example ---------------------------------
def _b64(i: int, inst: Any) -> bytes:
  if isinstance(inst, dict) and set(inst) == {"examples"}:
    inst = inst["examples"]
  elif isinstance(inst, dict) and set(inst) == {"inputs"}:
    inst = inst["inputs"]
  if not isinstance(inst, dict) or set(inst) != {"b64"}:
    raise RequestError(f"instances[{i}]: a serialized tf.Example is written "
                       "{\"examples\": {\"b64\": \"...\"}}, got " + short(inst))
  text = inst["b64"]
  if not isinstance(text, str):
    raise RequestError(f"instances[{i}]: \"b64\" must be a base64 string, got "
                       f"{short(text)}")
  try:
    return base64.b64decode(text.encode("ascii"), validate=True)
  except (binascii.Error, ValueError) as e:  # bad padding/characters, non-ASCII
    raise RequestError(f"instances[{i}]: \"b64\" is not valid base64 ({e})")


def _example_values(f: spec_lib.Feature, feature) -> Any:
  """The values of one tf.Example feature as parse_value takes them, or None if absent."""
  kind = feature.WhichOneof("kind")
  if kind is None:
    return None
  if f.kind == spec_lib.NUMERIC and kind != "float_list":
    raise ValueError(f"is a {kind}, the spec needs a float_list")
  if f.kind != spec_lib.NUMERIC and kind == "float_list":
    raise ValueError("is a float_list, the spec needs a bytes_list or an int64_list "
                     "(ids)")
  # An int64 id is its decimal string, as the signatures read it (data.int_ids_as_bytes).
  values = [v.decode("utf-8") if kind == "bytes_list" else str(v) if kind == "int64_list"
            else v for v in getattr(feature, kind).value]
  if f.kind in _LISTS:
    return values
  if len(values) != 1:
    raise ValueError(f"has {len(values)} values, the spec needs exactly one")
  return values[0]


def examples_from_instances(instances: Sequence[Any],
                            spec: spec_lib.FeatureSpec = None) -> List[bytes]:
  """serving_default instances: {"examples": {"b64": ...}} or {"b64": ...}.

  With a spec, each Example is checked as `tf.io.parse_example` and the model will read
  it: every model input present (or defaulted), of the right type, finite.
  """
  out = []
  for i, inst in enumerate(instances):
    serialized = _b64(i, inst)
    if spec is not None:
      check_example(spec, serialized, i)
    out.append(serialized)
  return out


def check_example(spec: spec_lib.FeatureSpec, serialized: bytes, i: int = 0) -> None:
  try:
    example = example_pb2.Example.FromString(serialized)
  except (message.DecodeError, ValueError, RuntimeError) as e:
    raise RequestError(f"instances[{i}]: the decoded b64 is not a serialized "
                       f"tf.Example ({e})")
  present = example.features.feature
  for f in spec.model_inputs:
    try:
      raw = _example_values(f, present[f.name]) if f.name in present else None
    except (ValueError, UnicodeDecodeError) as e:
      raise RequestError(f"instances[{i}]: feature {f.name!r} {e}")
    if raw is None and f.required:
      raise RequestError(f"instances[{i}]: required feature {f.name!r} is missing")
    _parse(spec, f, raw, i)


# --- predict: raw named tensors -----------------------------------------------------------
def _parse(spec: spec_lib.FeatureSpec, f: spec_lib.Feature, value: Any, i: int):
  """spec.parse_value, its errors (and any a huge JSON number raises) as RequestError."""
  try:
    return spec.parse_value(f, value)
  except (ValueError, OverflowError, TypeError) as e:  # SpecError is a ValueError
    raise RequestError(f"instances[{i}]: {e}")


def _encodable(f: spec_lib.Feature, value: Any, i: int) -> None:
  """A string a tensor can hold: JSON allows lone surrogates ("\\ud800"), UTF-8 not."""
  for v in value if isinstance(value, list) else [value]:
    if isinstance(v, str):
      try:
        v.encode("utf-8")
      except UnicodeEncodeError:
        raise RequestError(f"instances[{i}]: feature {f.name!r}: {short(v)} is not "
                           "valid Unicode text")


def _unpadded(value: Any) -> Any:
  """A list without its trailing "": TF Serving's row format needs a batch's lists
  padded to one length, and "" is never a value, so one request serves both."""
  if not isinstance(value, list):
    return value
  end = len(value)
  while end and isinstance(value[end - 1], str) and value[end - 1] == "":
    end -= 1
  return value[:end]


def _raw_value(spec: spec_lib.FeatureSpec, f: spec_lib.Feature, value: Any, i: int):
  """One JSON value of a predict instance, typed as the signature takes it."""
  if f.kind in _LISTS:
    value = _unpadded(value)
  if f.kind == spec_lib.NUMERIC:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      # As TF Serving for a float input: a JSON number, not a string or a boolean.
      raise RequestError(f"instances[{i}]: feature {f.name!r} must be a number, got "
                         f"{short(value)}")
  elif f.kind == spec_lib.SEQUENCE:
    if not isinstance(value, list):  # each element checked by parse_value, by position
      raise RequestError(f"instances[{i}]: feature {f.name!r} must be a list of values "
                         f"(most recent last), got {short(value)}")
  elif f.kind == spec_lib.MULTI_CATEGORICAL:
    if not isinstance(value, (list, str)):
      raise RequestError(f"instances[{i}]: feature {f.name!r} must be a list of "
                         f"strings, got {short(value)}")
    if isinstance(value, list) and any(isinstance(v, str) and
                                       len(v) > spec_lib.MAX_CELL_CHARS for v in value):
      raise RequestError(f"instances[{i}]: feature {f.name!r}: a value is over "
                         f"{spec_lib.MAX_CELL_CHARS} characters")
  elif isinstance(value, (list, dict)):
    raise RequestError(f"instances[{i}]: feature {f.name!r} must be one value, got "
                       f"{short(value)}")
  _encodable(f, value, i)
  return _parse(spec, f, value, i)


def tensors_from_instances(spec: spec_lib.FeatureSpec, instances: Sequence[Any]
                           ) -> Dict[str, np.ndarray]:
  """predict-signature instances (one dict of raw values each) -> batched arrays."""
  if not instances:
    raise RequestError("\"instances\" is empty; a request needs at least one instance")
  inputs = {f.name: f for f in spec.model_inputs}
  columns: Dict[str, list] = {name: [] for name in inputs}
  for i, inst in enumerate(instances):
    if not isinstance(inst, Mapping):
      raise RequestError(f"instances[{i}]: expected an object of feature values, got "
                         f"{short(inst)}")
    unknown = sorted(set(inst) - set(inputs), key=str)
    if unknown:
      raise RequestError(f"instances[{i}]: unknown feature(s) {unknown}; the predict "
                         f"signature takes {sorted(inputs)}")
    for name, f in inputs.items():
      if name not in inst or inst[name] is None:
        if f.required:
          raise RequestError(f"instances[{i}]: required feature {name!r} is missing")
        columns[name].append(_parse(spec, f, None, i))  # its default
      else:
        columns[name].append(_raw_value(spec, f, inst[name], i))
  out = {}
  for name, f in inputs.items():
    if f.kind in _LISTS:  # a sequence longer than max_length: the signature cuts it
      width = max([len(v) for v in columns[name]] + [1])
      out[name] = np.array([v + [""] * (width - len(v)) for v in columns[name]],
                           dtype=object).reshape(len(columns[name]), width)
    elif f.kind == spec_lib.NUMERIC:
      out[name] = np.array(columns[name], dtype=np.float32)
    else:
      out[name] = np.array(columns[name], dtype=object)
  return out


def instances_from_examples(spec: spec_lib.FeatureSpec, serialized: Sequence[bytes],
                            raw: bool) -> List[Dict[str, Any]]:
  """Builds request instances from tf.Example rows (for demos and warm-up files)."""
  if not raw:
    return [{"examples": {"b64": base64.b64encode(s).decode()}} for s in serialized]
  instances = []
  for s in serialized:
    ex = tf.train.Example.FromString(s).features.feature
    inst = {}
    for f in spec.model_inputs:
      if f.kind == spec_lib.NUMERIC:
        inst[f.name] = float(ex[f.name].float_list.value[0])
      else:
        feature = ex[f.name]
        values = ([str(v) for v in feature.int64_list.value]
                  if feature.WhichOneof("kind") == "int64_list"
                  else [v.decode() for v in feature.bytes_list.value])
        inst[f.name] = values if f.kind in _LISTS else values[0]
    instances.append(inst)
  return instances
