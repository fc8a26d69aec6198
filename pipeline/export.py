"""SavedModel export for TF Serving: `<export_root>/<version>/`, written atomically.

Signatures (all batch-first; HMDN models add "codes" [batch, views * levels], the
distribution ids to log and monitor):
  serving_default  {"examples": serialized tf.Example [batch]} -> {"probability": [batch]}
  predict          the model inputs as named raw tensors      -> the same outputs
  classify         {"inputs": serialized tf.Example [batch]}
                   -> {"scores": [batch, 2], "classes": [batch, 2]}, method
                   tensorflow/serving/classify, for TF Serving's Classify API.
A spec with several labels (tasks, `models/tasks.py`) adds, to serving_default and
predict, "probability_<task>" [batch] for every task (over every impression: for a task
`after` another ESMM's p(ctcvr)), "probability_<task>_given_<prerequisite>" [batch] for
an `after` task (its head: p(cvr)), and for HMDN "codes_<task>" [batch, views * levels]
(each task reads its own codes: one output per task, named like its probability, so a
REST answer reads `codes_purchase` beside `probability_purchase`). "probability" and
"codes" stay the first task's and classify answers for the first task, so a client of
the one-task model keeps working; a one-task model's outputs are unchanged.
In a tf.Example (serving_default, classify) a categorical, multi-valued or sequence
feature is a bytes_list or an int64_list, an int the id its decimal string is (123 and
"123" one vocabulary row; `data.int_ids_as_bytes`); a float_list there is refused.
Every signature rejects a non-finite numeric input (NaN, inf, a number beyond float32)
with an error naming the feature and the instance (`check_finite`).
`assets.extra/tf_serving_warmup_requests` holds PredictionLogs TF Serving replays at
load time; `assets.extra/spec.yaml` is the feature spec the model was trained with and
`assets.extra/model_config.json` its ModelConfig.
"""
import json
import os
import time
from typing import Dict, List, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from hmdn.features import locks, options, ownership, run_directory
from hmdn.features import spec as spec_lib
from hmdn.features.fileio import write_json_atomic
from hmdn.features.preprocessed import PreprocessedData, spec_fingerprint
from hmdn.models import tasks as tasks_lib
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data

CLASSIFY_METHOD = "tensorflow/serving/classify"
# The layout of one version directory (besides TF's own SavedModel files).
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA = "assets.extra"
SPEC_FILE = PreprocessedData.SPEC_FILE  # named as in the data the model was trained on
MODEL_CONFIG_FILE = "model_config.json"
WARMUP_FILE = "tf_serving_warmup_requests"
TMP_PREFIX = ".tmp-"  # a version being written: `<export_root>/.tmp-<version>/`


def spec_path(version_dir: str) -> str:
  """The feature spec an export was trained with."""
  return os.path.join(version_dir, ASSETS_EXTRA, SPEC_FILE)


def model_config_path(version_dir: str) -> str:
  """The ModelConfig of an export, as JSON."""
  return os.path.join(version_dir, ASSETS_EXTRA, MODEL_CONFIG_FILE)


def warmup_path(version_dir: str) -> str:
  return os.path.join(version_dir, ASSETS_EXTRA, WARMUP_FILE)


def read_spec(version_dir: str) -> spec_lib.FeatureSpec:
  return spec_lib.load_spec(spec_path(version_dir))


def read_model_config(version_dir: str):
  """The export's ModelConfig, or None for an export written without one."""
  path = model_config_path(version_dir)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return run_directory.model_config_from_record(json.load(f), ModelConfig)


def check_data(version_dir: str, data_dir: str) -> None:
  """The data directory holds data of the spec the export was trained with: another
  dataset's examples would fail deep inside TensorFlow, or be scored as garbage."""
  data_files = PreprocessedData(data_dir).check_complete()
  if not tf.io.gfile.exists(spec_path(version_dir)):
    return  # an export written before the spec travelled with it
  exported = read_spec(version_dir)
  if spec_fingerprint(exported) != spec_fingerprint(data_files.spec):
    raise ValueError(
        f"--data_dir={data_dir} holds data of the spec {data_files.spec.name!r} "
        f"(fingerprint {spec_fingerprint(data_files.spec)}), not of the spec "
        f"{exported.name!r} the export {version_dir} was trained with (fingerprint "
        f"{spec_fingerprint(exported)}; "
        f"{exported.difference(data_files.spec, ('the export', 'the data'))}); "
        "evaluate it on data of its own spec")


def check_model_flags(version_dir: str, given: Dict[str, object]) -> None:
  """Model flags given beside an export (`hmdn evaluate --saved_model`) must be what it
  serves: the export fixes the model, so a differing flag would be ignored silently."""
  if not given:
    return
  served = read_model_config(version_dir)
  if served is None:
    raise ValueError(f"{version_dir} records no model config, so the model flags "
                     f"{sorted('--' + f for f in given)} cannot be checked against it: "
                     "drop them (the export's model is evaluated)")
  run_directory.check_given_model(served, given, f"the export {version_dir}, served",
                                  "drop the flag (the export's model is evaluated)")


def check_same_model(export_root: str, config: ModelConfig,
                     spec: spec_lib.FeatureSpec) -> None:
  """A new version serves what the root's newest version serves: the same model, spec
  and outputs. TF Serving switches to the newest version by itself, so another model
  (other outputs, codes or none) or another spec (other inputs) exported beside it would
  change the answers under its clients without a word."""
  numbered = [v for v in versions(export_root)
              if is_version(os.path.join(export_root, str(v)))]
  if not numbered:
    return
  newest = os.path.join(export_root, str(numbered[-1]))
  served = read_model_config(newest)
  differs = []
  if served is not None and (served.name, served.quantizes) != (config.name,
                                                                config.quantizes):
    differs.append(f"model {served.name!r}"
                   + ("" if served.name != config.name else
                      f" {'with' if served.quantizes else 'without'} codes"))
  if tf.io.gfile.exists(spec_path(newest)) and (
      spec_fingerprint(read_spec(newest)) != spec_fingerprint(spec)):
    differs.append(f"spec {read_spec(newest).name!r} (fingerprint "
                   f"{spec_fingerprint(read_spec(newest))})")
  if differs:
    raise ValueError(
        f"--export_dir={export_root}: its newest version {numbered[-1]} serves "
        f"{' and '.join(differs)}, not this run's model {config.name!r} of spec "
        f"{spec.name!r}; TF Serving would switch its clients to other "
        "outputs: export into another --export_dir")


def is_version(path: str) -> bool:
  """A directory holding one exported SavedModel."""
  return tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE))


def versions(export_root: str) -> List[int]:
  """The version numbers under an export root, ascending (none if it does not exist)."""
  if not tf.io.gfile.isdir(export_root):
    return []
  return sorted(int(n.strip("/")) for n in tf.io.gfile.listdir(export_root)
                if n.strip("/").isdigit())


def check_finite(features: Dict[str, tf.Tensor], spec: spec_lib.FeatureSpec
                 ) -> Dict[str, tf.Tensor]:
  """Every numeric input finite, or InvalidArgumentError naming the feature and the
  first bad instance (TF Serving returns the message to the client).

  NaN, inf, and numbers beyond float32 (1e39 in a request becomes inf) would otherwise be
  served as a NaN or a meaningless probability. The message is built in the graph:
  "assertion failed: [feature price is not a finite number at instance 3: inf]" (no
  quotes: the Assert op would escape them).
  """
  checked = dict(features)
  for f in spec.model_inputs:
    if f.kind != spec_lib.NUMERIC or f.name not in features:
      continue
    x = features[f.name]
    bad = tf.logical_not(tf.math.is_finite(x))
    # The first bad row and its value; -1 and 0 pad an empty batch (never shown).
    first = tf.concat([tf.where(bad)[:, 0], tf.constant([-1], tf.int64)], 0)[0]
    value = tf.concat([tf.boolean_mask(x, bad), tf.zeros([1], x.dtype)], 0)[0]
    message = tf.strings.format(
        "feature " + f.name + " is not a finite number at instance {}: {}",
        (first, value))
    assertion = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])
    with tf.control_dependencies([assertion]):
      checked[f.name] = tf.identity(x)
  return checked


def serving_outputs(out: Dict[str, tf.Tensor], tasks: Sequence[tasks_lib.Task]
                    ) -> Dict[str, tf.Tensor]:
  """The model's call outputs -> the signatures' (probabilities [batch]; codes
  [batch, views * levels]); see the module docstring."""
  result = {"probability": tf.reshape(out["probability"], [-1])}
  if len(tasks) > 1:
    for t in tasks:
      result[f"probability_{t.name}"] = tf.reshape(out[f"probability_{t.name}"], [-1])
      if t.after is not None:
        result[f"probability_{t.given}"] = tf.reshape(out[f"probability_{t.given}"], [-1])
  if "codes" in out:
    result["codes"] = out["codes"]
    if len(tasks) > 1:  # [batch, tasks, views * levels] -> one output per task
      for t in tasks:
        result[f"codes_{t.name}"] = out["codes_by_task"][:, t.index]
  return result


class ServingModule(tf.Module):
  """Wraps a trained model with the parsing the serving side needs, and nothing else.

  The one place the serving outputs are shaped (`serving_outputs`): {"probability":
  [batch]} and, for HMDN models, {"codes": [batch, views * levels]}, plus each task's
  with several (the module docstring). The exported signatures and the in-memory
  evaluation (`evaluate.model_predictor`) both call it.
  """

  def __init__(self, model: tf.keras.Model, spec: spec_lib.FeatureSpec):
    super().__init__()
    self.model = model
    self._spec = spec
    self._tasks = tasks_lib.tasks_of(spec)  # their output names: spec validation
    self.serve_examples = tf.function(
        self._serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    self.serve_tensors = tf.function(
        self._serve_tensors, input_signature=[spec.tensor_specs()])
    self.classify = tf.function(
        self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

  def _outputs(self, features) -> Dict[str, tf.Tensor]:
    out = self.model(check_finite(features, self._spec), training=False)
    return serving_outputs(out, self._tasks)

  def _serve_examples(self, examples):
    examples = data.int_ids_as_bytes(examples, self._spec)  # ids as int64 lists too
    return self._outputs(data.parse_batch(examples, self._spec, for_serving=True))

  def _serve_tensors(self, features):
    return self._outputs(data.fit_sequences(features, self._spec))

  def _classify(self, inputs):
    p = self._serve_examples(inputs)["probability"]  # the first task's
    scores = tf.stack([1.0 - p, p], axis=1)
    classes = tf.tile(tf.constant([["0", "1"]]), [tf.shape(p)[0], 1])
    return {"scores": scores, "classes": classes}


def prune_versions(export_root: str, keep: int, log=print) -> List[int]:
  """Removes the version directories under `export_root` older than its newest `keep`
  (0: none removed); only directories holding a SavedModel, never anything else.
  Returns the versions removed, said in one line."""
  if keep <= 0:
    return []
  numbered = [v for v in versions(export_root)
              if is_version(os.path.join(export_root, str(v)))]
  removed = numbered[:-keep]
  for version in removed:
    tf.io.gfile.rmtree(os.path.join(export_root, str(version)))
  if removed:
    log(f"export: removed {len(removed)} earlier version{'s' * (len(removed) > 1)} of "
        f"{export_root} ({', '.join(map(str, removed))}); kept the newest {keep}")
  return removed


def describe(version_dir: str) -> str:
  """One line saying what an export holds: its signatures, warm-up requests, the
  files beside the model and its size."""
  loaded = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(version_dir, SAVED_MODEL_FILE), "rb") as f:
    loaded.ParseFromString(f.read())
  signatures = sorted(loaded.meta_graphs[0].signature_def) if loaded.meta_graphs else []
  warmup = (sum(1 for _ in tf.data.TFRecordDataset(warmup_path(version_dir)))
            if tf.io.gfile.exists(warmup_path(version_dir)) else 0)
  size = sum(tf.io.gfile.stat(os.path.join(root, name)).length
             for root, _, files in tf.io.gfile.walk(version_dir) for name in files)
  extra = [n for n in (SPEC_FILE, MODEL_CONFIG_FILE)
           if tf.io.gfile.exists(os.path.join(version_dir, ASSETS_EXTRA, n))]
  return (f"exported {version_dir}: SavedModel with signatures "
          f"{', '.join(s for s in signatures if not s.startswith('__'))}; {warmup} "
          f"warm-up requests; {', '.join(extra) or 'nothing'} in {ASSETS_EXTRA}/; "
          f"{size / 1e6:.1f} MB")


def next_version(export_root: str) -> int:
  """A version number larger than any existing one (seconds since the epoch)."""
  return max([int(time.time())] + [v + 1 for v in versions(export_root)])


def _mark_classify_signature(export_dir: str) -> None:
  """tf.saved_model.save writes every signature as predict; TF Serving's Classify API
  needs the classify method name, so it is set in the saved proto."""
  path = os.path.join(export_dir, SAVED_MODEL_FILE)
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    if "classify" in meta_graph.signature_def:
      meta_graph.signature_def["classify"].method_name = CLASSIFY_METHOD
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(saved_model.SerializeToString())


def _write_warmup(export_dir: str, examples: Sequence[bytes]) -> None:
  """assets.extra/tf_serving_warmup_requests: PredictionLogs for serving_default."""
  path = warmup_path(export_dir)
  with tf.io.TFRecordWriter(path) as writer:
    for batch in (examples[:1], examples):
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
      request.inputs["examples"].CopyFrom(tf.make_tensor_proto(list(batch),
                                                               dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def export(model: tf.keras.Model, spec: spec_lib.FeatureSpec, export_root: str,
           warmup_examples: Sequence[bytes] = ()) -> str:
  """Saves to a temporary directory, then renames it to `<export_root>/<version>`.

  Over-parameterised factors (APG) are merged first: same outputs, fewer weights.
  A watcher (TF Serving polls the root) never sees a half-written version. The root is
  new, empty or an export root (`features.ownership`; a new version never replaces
  one), locked while it is written; a failed write removes its temporary version.
  """
  with locks.held(export_root, "--export_dir"):
    ownership.claim(export_root, ownership.EXPORT, "--export_dir",
                    signature=str.isdigit, own=_is_export_entry)
    version = next_version(export_root)
    final = os.path.join(export_root, str(version))
    tmp = os.path.join(export_root, f"{TMP_PREFIX}{version}")
    try:
      _save(model, spec, tmp, warmup_examples)
      tf.io.gfile.rename(tmp, final)
    except BaseException:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
      raise
  return final


def _is_export_entry(name: str) -> bool:
  """A version directory, or a killed export's temporary one."""
  return name.isdigit() or name.startswith(TMP_PREFIX)


def _save(model: tf.keras.Model, spec: spec_lib.FeatureSpec, tmp: str,
          warmup_examples: Sequence[bytes]) -> None:
  """The SavedModel with its signatures and assets.extra, into `tmp`."""
  if tf.io.gfile.exists(tmp):
    tf.io.gfile.rmtree(tmp)
  backbone = getattr(model, "backbone", None)
  if hasattr(backbone, "merge_overparameterization"):  # APG: serve single U and V
    with model.distribute_strategy.scope():
      backbone.merge_overparameterization()
  module = ServingModule(model, spec)
  tf.saved_model.save(module, tmp, signatures={
      "serving_default": module.serve_examples,
      "predict": module.serve_tensors,
      "classify": module.classify,
  })
  _mark_classify_signature(tmp)
  # The spec travels with the model: `hmdn predict` builds raw-tensor requests from it.
  tf.io.gfile.makedirs(os.path.join(tmp, ASSETS_EXTRA))
  spec.save(spec_path(tmp))
  if hasattr(model, "config"):  # what `hmdn evaluate --saved_model` reports codes by
    write_json_atomic(model_config_path(tmp), options.to_record(model.config))
  if warmup_examples:
    _write_warmup(tmp, list(warmup_examples))
