"""Requests in TF Serving's REST predict format, turned into signature inputs.

`{"signature_name": "predict", "instances": [{"scenario": "s0", "price": 3.5, ...}]}`
feeds the raw-tensor signature; `{"instances": [{"examples": {"b64": "..."}}]}` feeds
`serving_default` (serialized tf.Example), exactly as TF Serving decodes them.
A missing optional feature takes its spec default, a missing required one or a value of
the wrong type is an error naming the feature.
"""
import base64
import json
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from features import spec as spec_lib


class RequestError(ValueError):
  """A request that does not fit the signature; the message names the feature."""


def load_request(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      request = json.load(f)
  except (OSError, ValueError) as e:
    raise RequestError(f"{path}: cannot read a JSON request ({e})")
  if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
    raise RequestError(f"{path}: expected {{\"signature_name\": ..., \"instances\": "
                       "[...]}} as in TF Serving's REST predict API")
  return request


def examples_from_instances(instances: Sequence[Any]) -> List[bytes]:
  """serving_default instances: {"examples": {"b64": ...}} or {"b64": ...}."""
  out = []
  for i, inst in enumerate(instances):
    if isinstance(inst, dict) and "examples" in inst:
      inst = inst["examples"]
    if not isinstance(inst, dict) or "b64" not in inst:
      raise RequestError(f"instances[{i}]: serving_default takes serialized tf.Example "
                         "as {\"examples\": {\"b64\": \"...\"}}")
    out.append(base64.b64decode(inst["b64"]))
  return out


def tensors_from_instances(spec: spec_lib.FeatureSpec, instances: Sequence[Mapping]
                           ) -> Dict[str, np.ndarray]:
  """predict-signature instances (one dict of raw values each) -> batched arrays."""
  columns: Dict[str, list] = {f.name: [] for f in spec.model_inputs}
  for i, inst in enumerate(instances):
    if not isinstance(inst, Mapping):
      raise RequestError(f"instances[{i}]: expected an object of feature values, got "
                         f"{type(inst).__name__}")
    unknown = set(inst) - set(spec.names)
    if unknown:
      raise RequestError(f"instances[{i}]: unknown feature(s) {sorted(unknown)}")
    for f in spec.model_inputs:
      value = inst.get(f.name)
      if value is None:
        if f.required:
          raise RequestError(f"instances[{i}]: required feature {f.name!r} is missing")
        value = f.default
      if f.kind == spec_lib.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
          try:
            value = float(value)
          except (TypeError, ValueError):
            raise RequestError(f"instances[{i}]: feature {f.name!r} must be a number, "
                               f"got {value!r}")
        columns[f.name].append(float(value))
      elif f.kind == spec_lib.MULTI_CATEGORICAL:
        if isinstance(value, str):
          value = [v for v in value.split(f.separator) if v]
        if not isinstance(value, list):
          raise RequestError(f"instances[{i}]: feature {f.name!r} must be a list of "
                             f"strings, got {value!r}")
        columns[f.name].append([str(v) for v in value])
      else:
        if isinstance(value, (list, dict)):
          raise RequestError(f"instances[{i}]: feature {f.name!r} must be one value, "
                             f"got {value!r}")
        columns[f.name].append(spec.parse_value(f, value))
  out = {}
  for f in spec.model_inputs:
    if f.kind == spec_lib.MULTI_CATEGORICAL:
      width = max([len(v) for v in columns[f.name]] + [1])
      out[f.name] = np.array([v + [""] * (width - len(v)) for v in columns[f.name]],
                             dtype=object)
    elif f.kind == spec_lib.NUMERIC:
      out[f.name] = np.array(columns[f.name], dtype=np.float32)
    else:
      out[f.name] = np.array(columns[f.name], dtype=object)
  return out


def instances_from_examples(spec: spec_lib.FeatureSpec, serialized: Sequence[bytes],
                            raw: bool) -> List[Dict[str, Any]]:
  """Builds request instances from tf.Example rows (for demos and warm-up files)."""
  if not raw:
    return [{"examples": {"b64": base64.b64encode(s).decode()}} for s in serialized]
  import tensorflow as tf
  instances = []
  for s in serialized:
    ex = tf.train.Example.FromString(s).features.feature
    inst = {}
    for f in spec.model_inputs:
      if f.kind == spec_lib.NUMERIC:
        inst[f.name] = float(ex[f.name].float_list.value[0])
      else:
        values = [v.decode() for v in ex[f.name].bytes_list.value]
        inst[f.name] = values if f.kind == spec_lib.MULTI_CATEGORICAL else values[0]
    instances.append(inst)
  return instances
