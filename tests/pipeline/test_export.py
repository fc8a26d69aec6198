"""The export as TF Serving sees it: versions, signatures (saved_model_cli show/run),
warm-up requests, REST-format requests in a fresh process, and serving-time input."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import ownership
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data, evaluate, export, serving_request, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture(scope="module")
def trained(planted_data_dir):
  spec = PreprocessedData(planted_data_dir).spec
  model = train.build_model(planted_data_dir, ModelConfig.of(
      name="hmdn_apg", num_levels=2, codebook_size=4, output_dim=8,
      codebook_warmup_steps=2))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  model.fit(data.make_dataset(planted_data_dir, TRAIN, spec, 256, training=True),
            steps_per_epoch=10, epochs=1, verbose=0)
  rows = data.first_records(planted_data_dir, EVAL, 6)
  expected = evaluate.model_predictor(model, spec)(tf.constant(rows))
  return model, spec, rows, {k: v.numpy() for k, v in expected.items()}


@pytest.fixture(scope="module")
def export_root(trained, tmp_path_factory):
  model, spec, rows, _ = trained
  root = str(tmp_path_factory.mktemp("export"))
  export.export(model, spec, root, warmup_examples=rows)
  return root


def _version(root):
  versions = sorted(v for v in os.listdir(root) if v.isdigit())
  return os.path.join(root, versions[-1])


def _cli(*args):
  proc = subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  return proc


def test_versions_are_atomic_and_increasing(trained, export_root):
  model, spec, rows, _ = trained
  first = _version(export_root)
  second = export.export(model, spec, export_root, warmup_examples=rows)
  assert int(os.path.basename(second)) > int(os.path.basename(first))
  # Nothing beside the versions but hmdn's own marker (no .tmp-<version>/ left).
  assert not [n for n in os.listdir(export_root)
              if not n.isdigit() and n not in ownership.OWN_ENTRIES]


def test_saved_model_cli_shows_the_three_signatures(export_root):
  shown = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", _version(export_root),
                          "--all"], capture_output=True, text=True, check=True).stdout
  for signature in ("serving_default", "predict", "classify"):
    assert f"signature_def['{signature}']" in shown
  assert "Method name is: tensorflow/serving/classify" in shown
  assert "outputs['codes']" in shown and "outputs['probability']" in shown
  assert "inputs['item_tags']" in shown  # raw-tensor signature: one input per feature


def test_saved_model_cli_run_matches_the_model(trained, export_root, tmp_path):
  _, spec, rows, expected = trained
  instance = serving_request.instances_from_examples(spec, rows[:1], raw=True)[0]
  as_lists = {k: v if isinstance(v, list) else [v] for k, v in instance.items()}
  examples = "examples=[" + json.dumps(as_lists) + "]"
  out = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", _version(export_root),
                        "--tag_set", "serve", "--signature_def", "serving_default",
                        "--input_examples", examples, "--outdir", str(tmp_path)],
                       capture_output=True, text=True, check=True)
  probability = np.load(tmp_path / "probability.npy")
  np.testing.assert_allclose(probability, expected["probability"][:1], atol=1e-5)
  assert out.returncode == 0


def test_a_one_task_export_keeps_its_outputs(export_root):
  # Several tasks add probability_<task> and codes_<task>; one task adds nothing.
  signatures = tf.saved_model.load(_version(export_root)).signatures
  for name in ("serving_default", "predict"):
    assert sorted(signatures[name].structured_outputs) == ["codes", "probability"]
  assert sorted(signatures["classify"].structured_outputs) == ["classes", "scores"]


def test_apg_factors_are_merged_in_the_export(export_root):
  # The fixture trains APG over-parameterised (the default overparam_dim): unmerged, its
  # adaptive layers hold .../backbone_apg/adaptive_{i}/u1, u2, v1, v2; merged, u and v.
  loaded = tf.saved_model.load(_version(export_root))
  leaves = [tuple(v.name.split(":")[0].split("/")[-2:]) for v in loaded.model.variables]
  assert not [leaf for leaf in leaves if leaf[1] in ("u1", "u2", "v1", "v2")], leaves
  adaptive = loaded.model.backbone._adaptive
  assert len(adaptive) >= 1
  for i, layer in enumerate(adaptive):
    assert (f"adaptive_{i}", "u") in leaves and (f"adaptive_{i}", "v") in leaves, leaves
    assert not hasattr(layer, "_factors")
    assert hasattr(layer, "u") and hasattr(layer, "v")


def test_warmup_requests_are_prediction_logs(export_root):
  from tensorflow_serving.apis import prediction_log_pb2
  path = export.warmup_path(_version(export_root))
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(path)]
  assert len(logs) == 2
  request = logs[1].predict_log.request
  assert request.model_spec.signature_name == "serving_default"
  assert tf.make_ndarray(request.inputs["examples"]).shape == (6,)


def test_rest_requests_in_a_fresh_process(trained, export_root, tmp_path):
  _, spec, rows, expected = trained
  for signature, raw in (("predict", True), ("serving_default", False),
                         ("classify", False)):
    request = {"signature_name": signature,
               "instances": serving_request.instances_from_examples(spec, rows, raw)}
    path = tmp_path / f"{signature}.json"
    path.write_text(json.dumps(request))
    proc = _cli("predict", f"--saved_model={export_root}", f"--input={path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    predictions = json.loads(proc.stdout.splitlines()[-1])["predictions"]
    if signature == "classify":
      got = np.array([p["scores"][1] for p in predictions])
    else:
      got = np.array([p["probability"] for p in predictions])
      codes = np.array([p["codes"] for p in predictions])
      np.testing.assert_array_equal(codes, expected["codes"])
    np.testing.assert_allclose(got, expected["probability"], atol=1e-5)


def test_unknown_category_goes_to_oov(trained, export_root):
  _, spec, rows, _ = trained
  loaded = tf.saved_model.load(_version(export_root))
  predict = loaded.signatures["predict"]
  base = serving_request.instances_from_examples(spec, rows[:1], raw=True)[0]
  never_seen = dict(base, item_id="never-seen-item")
  other_unseen = dict(base, item_id="another-unknown")
  out = [predict(**{k: tf.constant(v) for k, v in
                    serving_request.tensors_from_instances(spec, [inst]).items()})
         ["probability"].numpy()[0] for inst in (base, never_seen, other_unseen)]
  assert out[1] == pytest.approx(out[2], abs=1e-7)  # both take the one OOV embedding
  assert 0 < out[1] < 1


@pytest.mark.parametrize("change,message", [
    (lambda inst: inst.pop("price"), "required feature 'price' is missing"),
    (lambda inst: inst.update(price="cheap"), "'price' must be a number"),
    (lambda inst: inst.update(item_tags=5), "'item_tags' must be a list"),
    (lambda inst: inst.update(colour="red"), "unknown feature(s) ['colour']"),
])
def test_bad_raw_request_names_the_feature(trained, export_root, tmp_path, change,
                                           message):
  _, spec, rows, _ = trained
  instance = serving_request.instances_from_examples(spec, rows[:1], raw=True)[0]
  change(instance)
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({"signature_name": "predict", "instances": [instance]}))
  proc = _cli("predict", f"--saved_model={export_root}", f"--input={path}")
  assert proc.returncode == 2
  assert message in proc.stderr.strip().splitlines()[-1]
  assert "Traceback" not in proc.stderr


def test_serialized_example_missing_a_required_feature(trained, export_root, tmp_path):
  example = tf.train.Example.FromString(trained[2][0])
  del example.features.feature["price"]
  path = tmp_path / "missing.json"
  path.write_text(json.dumps({"instances": [
      {"examples": {"b64": base64.b64encode(example.SerializeToString()).decode()}}]}))
  proc = _cli("predict", f"--saved_model={export_root}", f"--input={path}")
  assert proc.returncode == 2
  assert "price" in proc.stderr.strip().splitlines()[-1]


def test_optional_feature_takes_its_default():
  spec = spec_lib.spec_from_dict({"name": "t", "features": [
      {"name": "y", "kind": "numeric", "role": "label"},
      {"name": "page", "kind": "categorical", "default": "home"},
      {"name": "score", "kind": "numeric", "default": 0.5},
      {"name": "tags", "kind": "multi_categorical", "default": ""}]})
  tensors = serving_request.tensors_from_instances(spec, [{}, {"score": 2, "tags": ["a"]}])
  assert tensors["page"].tolist() == ["home", "home"]
  assert tensors["score"].tolist() == [0.5, 2.0]
  assert tensors["tags"].tolist() == [[""], ["a"]]


@pytest.mark.parametrize("body,message", [
    ('{"signature_name": "predict", "instances": [INSTANCE, NAN]}',
     "instances[1]: field 'price': value nan is not a finite number"),
    ('{"instances": [{"examples": {"b64": "not base64"}}]}',
     "instances[0]: \"b64\" is not valid base64"),
    ('{"instances": []}', "\"instances\" is empty"),
    ('not json', "not a JSON request"),
])
def test_bad_requests_are_one_line_in_a_fresh_process(trained, export_root, tmp_path,
                                                      body, message):
  _, spec, rows, _ = trained
  instance = serving_request.instances_from_examples(spec, rows[:1], raw=True)[0]
  body = body.replace("INSTANCE", json.dumps(instance)).replace(
      "NAN", json.dumps(dict(instance, price=float("nan"))))
  path = tmp_path / "bad.json"
  path.write_text(body)
  proc = _cli("predict", f"--saved_model={export_root}", f"--input={path}")
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("hmdn predict: error:") and message in last, last
  assert "Traceback" not in proc.stderr and "node" not in last


def test_describe_says_what_the_export_holds(export_root):
  line = export.describe(_version(export_root))
  assert line.startswith(f"exported {_version(export_root)}: SavedModel with signatures "
                         "classify, predict, serving_default; 2 warm-up requests; "
                         "spec.yaml, model_config.json in assets.extra/; "), line
  assert line.endswith(" MB")


def test_prune_keeps_the_newest_versions_and_touches_nothing_else(tmp_path):
  root = tmp_path / "exports"
  for version in (5, 7, 9):
    (root / str(version)).mkdir(parents=True)
    (root / str(version) / export.SAVED_MODEL_FILE).write_bytes(b"")
  (root / "3").mkdir()  # a numbered directory without a SavedModel: not a version
  (root / "notes.txt").write_text("the user's")
  lines = []
  assert export.prune_versions(str(root), 0, log=lines.append) == []
  assert export.prune_versions(str(root), 2, log=lines.append) == [5]
  assert sorted(os.listdir(root)) == ["3", "7", "9", "notes.txt"]
  assert lines == [f"export: removed 1 earlier version of {root} (5); kept the newest 2"]
