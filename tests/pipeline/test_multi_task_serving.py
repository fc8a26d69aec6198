"""A two-task export (click; purchase after click) as TF Serving and `hmdn predict` see
it: every signature answers each task, in this process and in a fresh one
(tf.saved_model.load, saved_model_cli, `hmdn predict`), equal to the in-memory model;
classify answers for the first task; the codes per task are scored against the task."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData
from hmdn.features import spec as spec_lib
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import code_report, data, evaluate, export, metrics, serving
from hmdn.pipeline import serving_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
PROBABILITIES = ("probability", "probability_click", "probability_purchase",
                 "probability_purchase_given_click")
CONFIGS = {
    "hmdn_moe": dict(output_dim=8, distribution_dim=8, view_units=(16,), num_levels=2,
                     codebook_size=4, codebook_warmup_steps=0),
    "mmoe": dict(output_dim=8),
}


@pytest.fixture(scope="module")
def exports(two_task_data_dir, tmp_path_factory):
  """Each model's export, built once for the module on first use."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = _export(name, two_task_data_dir, tmp_path_factory)
    return cache[name]
  return get


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, exports):
  return exports(request.param)


@pytest.fixture(scope="module")
def hmdn_exported(exports):
  """The slow fresh-process tools run on the HMDN export (its outputs are a superset
  of the baseline's, which answers in fresh processes through `hmdn predict`)."""
  return exports("hmdn_moe")


def _export(name, data_dir, tmp_path_factory):
  """A briefly trained two-task model, its export, and its outputs on 6 eval rows."""
  tf.keras.utils.set_random_seed(0)
  spec = PreprocessedData(data_dir).spec
  model = train_model(data_dir, name)
  rows = data.first_records(data_dir, EVAL, 6)
  raw = model(data.parse_batch(tf.constant(rows), spec, for_serving=True))
  version = export.export(model, spec, str(tmp_path_factory.mktemp(f"export_{name}")),
                          warmup_examples=rows)
  return name, model, spec, rows, {k: v.numpy() for k, v in raw.items()}, version


def train_model(data_dir, name):
  from hmdn.pipeline import train
  spec = PreprocessedData(data_dir).spec
  model = train.build_model(data_dir, ModelConfig.of(name=name, **CONFIGS[name]))
  model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
  model.fit(data.make_dataset(data_dir, TRAIN, spec, 256, training=True),
            steps_per_epoch=8, epochs=1, verbose=0)
  return model


def _expected_outputs(name, raw):
  """The serving outputs the model's call implies: probabilities [B], codes per task."""
  out = {k: raw[k][:, 0] for k in PROBABILITIES}
  if name.startswith("hmdn_"):
    out["codes"] = raw["codes"]
    out["codes_click"] = raw["codes_by_task"][:, 0]
    out["codes_purchase"] = raw["codes_by_task"][:, 1]
  return out


def _assert_outputs_equal(got, want):
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    if k.startswith("codes"):
      np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)
    else:
      np.testing.assert_allclose(np.asarray(got[k]), v, atol=1e-5, err_msg=k)


def test_every_signature_answers_each_task(exported):
  name, _, spec, rows, raw, version = exported
  want = _expected_outputs(name, raw)
  np.testing.assert_allclose(want["probability_purchase"],
                             want["probability_click"] *
                             want["probability_purchase_given_click"], rtol=1e-5)
  if name.startswith("hmdn_"):  # the explicit view reads the task: codes differ
    assert want["codes_click"].shape == want["codes_purchase"].shape == want["codes"].shape
  loaded = tf.saved_model.load(version)
  by_examples = loaded.signatures["serving_default"](examples=tf.constant(rows))
  _assert_outputs_equal({k: v.numpy() for k, v in by_examples.items()}, want)
  tensors = serving_request.tensors_from_instances(
      spec, serving_request.instances_from_examples(spec, rows, raw=True))
  by_tensors = loaded.signatures["predict"](**{k: tf.constant(v)
                                               for k, v in tensors.items()})
  _assert_outputs_equal({k: v.numpy() for k, v in by_tensors.items()}, want)
  classified = loaded.signatures["classify"](inputs=tf.constant(rows))
  assert sorted(classified) == ["classes", "scores"]
  np.testing.assert_allclose(classified["scores"].numpy()[:, 1],
                             want["probability_click"], atol=1e-5)
  np.testing.assert_allclose(classified["scores"].numpy().sum(1), 1.0, atol=1e-6)


def test_a_fresh_process_loads_the_same_per_task_outputs(hmdn_exported, tmp_path):
  """tf.saved_model.load in a new process: every signature, every task's output."""
  name, _, spec, rows, raw, version = hmdn_exported
  tensors = serving_request.tensors_from_instances(
      spec, serving_request.instances_from_examples(spec, rows, raw=True))
  np.savez(tmp_path / "in.npz", rows=np.array(rows, dtype=object), **tensors)
  script = ("import sys, numpy as np, tensorflow as tf\n"
            "i = np.load(sys.argv[2], allow_pickle=True)\n"
            "sig = tf.saved_model.load(sys.argv[1]).signatures\n"
            "rows = tf.constant(list(i['rows']))\n"
            "out = {'examples': sig['serving_default'](examples=rows),\n"
            "       'tensors': sig['predict'](**{k: tf.constant(i[k]) for k in i.files\n"
            "                                    if k != 'rows'}),\n"
            "       'classify': sig['classify'](inputs=rows)}\n"
            "np.savez(sys.argv[3], **{f'{s}/{k}': v.numpy() for s, o in out.items()\n"
            "                         for k, v in o.items()})\n")
  subprocess.run([sys.executable, "-c", script, version, str(tmp_path / "in.npz"),
                  str(tmp_path / "out.npz")], check=True, capture_output=True, timeout=300)
  got = np.load(tmp_path / "out.npz")
  want = _expected_outputs(name, raw)
  for signature in ("examples", "tensors"):
    _assert_outputs_equal({k.split("/")[1]: got[k] for k in got.files
                           if k.startswith(signature + "/")}, want)
  np.testing.assert_allclose(got["classify/scores"][:, 1], want["probability_click"],
                             atol=1e-5)


def test_saved_model_cli_shows_and_runs_each_task(hmdn_exported, tmp_path):
  name, _, spec, rows, raw, version = hmdn_exported
  shown = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", version, "--all"],
                         capture_output=True, text=True, check=True).stdout
  for output in _expected_outputs(name, raw):
    assert f"outputs['{output}']" in shown, output
  instance = serving_request.instances_from_examples(spec, rows[:1], raw=True)[0]
  as_lists = {k: v if isinstance(v, list) else [v] for k, v in instance.items()}
  subprocess.run([SAVED_MODEL_CLI, "run", "--dir", version, "--tag_set", "serve",
                  "--signature_def", "serving_default", "--input_examples",
                  "examples=[" + json.dumps(as_lists) + "]", "--outdir", str(tmp_path)],
                 capture_output=True, text=True, check=True)
  for output, value in _expected_outputs(name, raw).items():
    got = np.load(tmp_path / f"{output}.npy")
    np.testing.assert_allclose(got, value[:1], atol=1e-5, err_msg=output)


def test_hmdn_predict_lists_each_task_per_instance(exported, tmp_path):
  name, _, spec, rows, raw, version = exported
  want = _expected_outputs(name, raw)
  # The raw-tensor predict signature answers through `hmdn predict` in
  # test_the_self_check_compares_every_task; here serialized tf.Examples.
  for signature, as_raw in (("serving_default", False),):
    request = {"signature_name": signature,
               "instances": serving_request.instances_from_examples(spec, rows, as_raw)}
    path = tmp_path / f"{signature}.json"
    path.write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", "predict",
                           f"--saved_model={os.path.dirname(version)}", f"--input={path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predictions = json.loads(proc.stdout.splitlines()[-1])["predictions"]
    assert len(predictions) == len(rows)
    # Every instance names every output, the probabilities first in spec order.
    order = [k for k in spec_lib.output_names(spec) if k in want]
    assert all(list(p) == order for p in predictions), list(predictions[0])
    assert list(predictions[0])[:4] == list(PROBABILITIES)
    _assert_outputs_equal({k: [p[k] for p in predictions] for k in want}, want)


def test_a_predict_request_giving_a_label_is_refused_in_one_line(hmdn_exported, tmp_path):
  """A two-task model's predict request holding the second task's label (a client
  sending the row it logged) is refused naming the instance and the field, not
  answered with the label ignored."""
  _, _, spec, rows, _, version = hmdn_exported
  instances = serving_request.instances_from_examples(spec, rows[:2], raw=True)
  instances[1]["purchase"] = 1
  path = tmp_path / "request.json"
  path.write_text(json.dumps({"signature_name": "predict", "instances": instances}))
  with pytest.raises(serving_request.RequestError) as e:
    serving.predict(version, str(path))
  assert "instances[1]: unknown feature(s) ['purchase']" in str(e.value)
  assert "\n" not in str(e.value)


def test_the_self_check_compares_every_task(exported, tmp_path, capsys):
  name, model, spec, rows, _, version = exported
  expected = {k: v.numpy() for k, v in
              evaluate.model_predictor(model, spec)(tf.constant(rows[:3])).items()}
  serving.verify_in_fresh_process(spec, rows[:3], expected, version, str(tmp_path))
  printed = capsys.readouterr().out
  for output in PROBABILITIES:
    assert f"fresh-process prediction of {output} from" in printed
  assert "verified:" in printed
  # The comparison itself, against the REST answer the fresh process gave.
  request = json.loads((tmp_path / "request.json").read_text())
  assert len(request["instances"]) == 3
  answer = [{k: np.asarray(v[i]).tolist() for k, v in expected.items()} for i in range(3)]
  serving.compare_answers(spec, answer, expected, version)
  for output in ("probability_purchase", "probability_purchase_given_click") + (
      ("codes_purchase",) if name.startswith("hmdn_") else ()):
    wrong = [dict(p) for p in answer]
    wrong[2][output] = (np.asarray(wrong[2][output]) + 1).tolist()
    with pytest.raises(RuntimeError, match=output):
      serving.compare_answers(spec, wrong, expected, version)
    with pytest.raises(RuntimeError, match=f"does not answer '{output}'"):
      serving.compare_answers(spec, [{k: v for k, v in p.items() if k != output}
                                     for p in answer], expected, version)


def test_the_code_report_scores_each_task_against_the_task(exported, two_task_data_dir):
  name, model, spec, _, _, _ = exported
  if not name.startswith("hmdn_"):
    assert "codes_by_task" not in evaluate.run(evaluate.model_predictor(model, spec),
                                               two_task_data_dir)
    return
  config = model.config
  columns = evaluate.collect(evaluate.model_predictor(model, spec), two_task_data_dir,
                             spec)
  result = evaluate.compute_metrics(columns, spec, config.codebook_size,
                                    config.code_views)
  report = result["codes_by_task"]
  levels = columns["codes"].shape[1] // len(config.code_views)
  assert levels == CONFIGS[name]["num_levels"]
  assert sorted(report) == sorted(f"{v}/level_{l + 1}" for v in config.code_views
                                  for l in range(levels))
  np.testing.assert_array_equal(columns["codes_click"], columns["codes"])
  stacked = np.stack([columns["codes_click"], columns["codes_purchase"]])  # [T, N, C]
  n = stacked.shape[1]
  for v, view in enumerate(config.code_views):
    for level in range(levels):
      entry = report[f"{view}/level_{level + 1}"]
      codes = stacked[:, :, v * levels + level]
      direct = metrics.normalized_mutual_information(codes.ravel(),
                                                     np.repeat([0, 1], n))
      assert np.isfinite(entry["nmi_task"]) and 0.0 <= entry["nmi_task"] <= 1.0
      assert entry["nmi_task"] == pytest.approx(direct, abs=1e-12)
      for field in ("scenario", "channel"):
        pooled = metrics.normalized_mutual_information(
            codes.ravel(), np.tile(columns[field], 2))
        assert entry["nmi"][field] == pytest.approx(pooled, abs=1e-12)
        for t, task in enumerate(("click", "purchase")):
          own = entry["tasks"][task]["nmi"][field]
          assert 0.0 <= own <= 1.0
          assert own == pytest.approx(metrics.normalized_mutual_information(
              codes[t], columns[field]), abs=1e-12)
      if view == "implicit":  # reads no task: the same codes for both, NMI 0
        np.testing.assert_array_equal(codes[0], codes[1])
        assert entry["nmi_task"] == pytest.approx(0.0, abs=1e-12)
  lines = [l for l in evaluate.format_table(result).splitlines() if "by task" in l]
  assert len(lines) == len(report) and all("NMI task" in l for l in lines)


def test_task_names_whose_outputs_collide_are_refused():
  labels = [{"name": "click", "kind": "numeric", "role": "label"},
            {"name": "purchase", "kind": "numeric", "role": "label", "after": "click"}]
  features = [{"name": "x", "kind": "categorical"}]
  spec = spec_lib.spec_from_dict({"name": "t", "features": labels + features})
  assert spec_lib.output_names(spec) == [
      "probability", "probability_click", "probability_purchase",
      "probability_purchase_given_click", "codes", "codes_click", "codes_purchase"]
  clash = {"name": "purchase_given_click", "kind": "numeric", "role": "label"}
  with pytest.raises(spec_lib.SpecError,
                     match="'probability_purchase_given_click' would name two"):
    spec_lib.spec_from_dict({"name": "t", "features": labels + [clash] + features})
  assert code_report.has_task_codes({"codes_click": 0, "codes_purchase": 0},
                                    ["click", "purchase"])
  assert not code_report.has_task_codes({"codes_click": 0}, ["click"])
