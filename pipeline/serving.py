"""The serving side of an export: find a version, answer a TF Serving REST request with
it (what `hmdn predict` does), and check in a fresh process that it answers as the
trained model did. The request format itself is pipeline/serving_request.py.
"""
import json
import os
import subprocess
import sys
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.fileio import jsonable
from hmdn.pipeline import export, serving_request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def latest_version(path: str) -> str:
  """An export root -> its newest version dir; a version dir stays as it is."""
  if export.is_version(path):
    return path
  found = export.versions(path)
  if not found:
    raise ValueError(f"--saved_model: {path} holds no SavedModel version")
  return os.path.join(path, str(found[-1]))


def _node_reason(e) -> str:
  """The sentence in a TensorFlow error: the signatures' own check ("assertion failed:
  [feature price ...]") or parse_example's ("Feature: price ... is required"), without
  the node and op names around it."""
  lines = [l.strip() for l in e.message.splitlines() if l.strip()]
  for line in lines:
    if "assertion failed:" in line:
      return line.split("assertion failed:", 1)[1].strip().strip("[]")
  return next((l for l in lines if "Feature:" in l), lines[0] if lines else str(e))


def predict(saved_model: str, request_path: str) -> Dict:
  """Answers a REST predict request (a JSON file) from the export, as TF Serving would:
  {"predictions": [{output name: value}, ...]}, one object per instance holding every
  output of the signature (with several tasks each task's probabilities, then the codes:
  `ordered_outputs`). The request is checked against the export's spec first
  (serving_request), so a bad one is a RequestError naming the instance and the
  feature, not a TensorFlow node error."""
  version = latest_version(saved_model)
  request = serving_request.load_request(request_path)
  loaded = tf.saved_model.load(version)
  name = request.get("signature_name", serving_request.SERVING_DEFAULT)
  if name not in loaded.signatures:
    raise serving_request.RequestError(
        f"signature_name {name!r} is not in {version}; it has {list(loaded.signatures)}")
  try:
    spec = export.read_spec(version)
    name, inputs = serving_request.signature_inputs(spec, request)
  except serving_request.RequestError as e:
    raise serving_request.RequestError(f"{request_path}: {e}")
  try:
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
  except tf.errors.InvalidArgumentError as e:  # the signatures' own checks
    raise serving_request.RequestError(f"{request_path}: {_node_reason(e)}")
  keys = ordered_outputs(out, spec)
  predictions = [{k: jsonable(np.asarray(out[k][i])) for k in keys}
                 for i in range(len(request["instances"]))]
  return {"predictions": predictions}


def ordered_outputs(out, spec: spec_lib.FeatureSpec) -> list:
  """The output names of `out` as a reader wants them (`spec_lib.output_names`: each
  task's probabilities in spec order, then the codes), then the rest (classify's)
  by name: a signature's outputs come back in no set order."""
  order = spec_lib.output_names(spec)
  return sorted(out, key=lambda k: (order.index(k) if k in order else len(order), k))


def verify_in_fresh_process(spec: spec_lib.FeatureSpec, rows: Sequence[bytes],
                            expected: Dict[str, np.ndarray], export_dir: str,
                            out: str) -> None:
  """Writes a REST request from eval rows into `out`; a new process (`hmdn predict`)
  answers it from the export, which must agree with the trained model's `expected`
  serving outputs: every task's probabilities (within 1e-5) and the codes (equal)."""
  request = {"signature_name": "predict",
             "instances": serving_request.instances_from_examples(spec, rows, raw=True)}
  request_path = os.path.join(out, "request.json")
  with open(request_path, "w") as f:
    json.dump(request, f, indent=1)
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "predict", f"--saved_model={export_dir}",
       f"--input={request_path}"], capture_output=True, text=True, cwd=ROOT)
  if proc.returncode != 0:
    raise RuntimeError(f"the export failed to answer in a fresh process:\n{proc.stderr}")
  predictions = json.loads(proc.stdout.strip().splitlines()[-1])["predictions"]
  print(f"request ({request_path}): {json.dumps(request['instances'][0])}")
  for line in compare_answers(spec, predictions, expected, export_dir):
    print(line)


def compare_answers(spec: spec_lib.FeatureSpec, predictions: Sequence[Dict],
                    expected: Dict[str, np.ndarray], export_dir: str) -> list:
  """REST predictions against the trained model's serving outputs: every task's
  probabilities within 1e-5, the codes equal, or RuntimeError naming the output.
  Returns the lines saying so."""
  lines, gap = [], 0.0
  for name in ordered_outputs(expected, spec):
    want = np.asarray(expected[name])
    if any(name not in p for p in predictions):
      raise RuntimeError(f"the reloaded SavedModel does not answer {name!r}")
    got = np.array([p[name] for p in predictions])
    if name.startswith("codes"):
      if got.shape != want.shape or not np.array_equal(got, want):
        raise RuntimeError(f"the reloaded SavedModel's {name} differ from the trained "
                           "model's")
      continue
    lines.append(f"fresh-process prediction of {name} from {export_dir}: "
                 f"{got.round(6).tolist()}; in-memory model: "
                 f"{want.astype(np.float64).round(6).tolist()}")
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
      raise RuntimeError(f"the reloaded SavedModel disagrees with the trained model on "
                         f"{name}")
    gap = max(gap, float(np.max(np.abs(got - want))) if len(got) else 0.0)
  lines.append(f"verified: {export_dir} answers {len(predictions)} eval rows in a fresh "
               f"process (`hmdn predict`) as the trained model does: "
               f"{', '.join(ordered_outputs(expected, spec))} (largest difference "
               f"{gap:.1e}, allowed 1e-05)")
  return lines
