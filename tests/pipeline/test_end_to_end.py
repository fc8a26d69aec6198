"""`hmdn` end to end, as a user types it: generate -> preprocess -> train -> evaluate ->
export, and the export answering in a fresh process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.preprocessed import EVAL, PreprocessedData

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hmdn(*args, check=True):
  """Runs the CLI in a fresh process, as the console script would."""
  proc = subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"hmdn {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("run")
  hmdn("run", f"--output_dir={out}", "--rows=6000", "--model=dnn", "--epochs=2",
       "--batch_size=256", "--direct_num_workers=1", "--seed=3")
  return out


def test_run_writes_documented_metrics(run_dir):
  with open(run_dir / "metrics.json") as f:
    metrics = json.load(f)
  for key in ("model", "seed", "auc", "logloss", "gauc", "rows_eval", "oracle_auc",
              "per_distribution"):
    assert key in metrics, key
  assert metrics["model"] == "dnn" and metrics["seed"] == 3
  # Planted data: a trained model is clearly better than chance, and below the oracle.
  assert 0.6 < metrics["auc"] < metrics["oracle_auc"] + 0.02
  scenario = metrics["per_distribution"]["scenario"]
  assert set(scenario) == {"s0", "s1", "s2"}
  assert sum(v["rows"] for v in scenario.values()) == metrics["rows_eval"]
  for v in scenario.values():
    assert set(v) >= {"auc", "logloss", "rows"}
  data_meta = PreprocessedData(str(run_dir / "data")).metadata
  assert data_meta["rows_written"]["eval"] == metrics["rows_eval"]


def test_export_reloads_in_fresh_process_with_same_predictions(run_dir):
  versions = [v for v in os.listdir(run_dir / "export") if v.isdigit()]
  assert len(versions) == 1, "export is versioned, with no temporary dir left"
  assert not [v for v in os.listdir(run_dir / "export") if v.startswith(".tmp")]
  export_dir = run_dir / "export" / versions[0]
  # Same request through both signatures, each in its own fresh process.
  request = json.load(open(run_dir / "request.json"))
  raw = json.loads(hmdn("predict", f"--saved_model={run_dir / 'export'}",
                        f"--input={run_dir / 'request.json'}").stdout.splitlines()[-1])
  files = PreprocessedData(str(run_dir / "data")).split_files(EVAL)
  rows = [r.numpy() for r in tf.data.TFRecordDataset(
      files, compression_type="GZIP").take(len(request["instances"]))]
  import base64
  b64_request = {"instances": [{"examples": {"b64": base64.b64encode(r).decode()}}
                               for r in rows]}
  path = run_dir / "b64_request.json"
  path.write_text(json.dumps(b64_request))
  serialized = json.loads(hmdn("predict", f"--saved_model={export_dir}",
                               f"--input={path}").stdout.splitlines()[-1])
  p_raw = np.array([p["probability"] for p in raw["predictions"]])
  p_ser = np.array([p["probability"] for p in serialized["predictions"]])
  np.testing.assert_allclose(p_raw, p_ser, atol=1e-6)
  # And equal to the trained model restored in this process from its checkpoint.
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline import evaluate, train
  model = train.load_trained(str(run_dir / "data"), str(run_dir / "model"),
                             ModelConfig(name="dnn", seed=3))
  spec = PreprocessedData(str(run_dir / "data")).spec
  expected = evaluate.model_predictor(model, spec)(tf.constant(rows))["probability"]
  np.testing.assert_allclose(p_ser, expected.numpy(), atol=1e-5)
  assert 0 < p_ser.min() and p_ser.max() < 1


def test_evaluate_on_export_matches_run_metrics(run_dir, tmp_path):
  out = tmp_path / "eval.json"
  hmdn("evaluate", f"--data_dir={run_dir / 'data'}", f"--saved_model={run_dir / 'export'}",
       f"--output={out}")
  again = json.load(open(out))
  original = json.load(open(run_dir / "metrics.json"))
  assert abs(again["auc"] - original["auc"]) < 1e-6
  assert again["per_distribution"].keys() == original["per_distribution"].keys()
  # The export fixes the model: a model flag it does not serve, or a run directory
  # beside it, would be ignored; each is refused in one line.
  for extra, expected in [
      ("--model=moe", "--model=moe contradicts the export"),
      (f"--model_dir={run_dir / 'model'}", "evaluate reads one model; give one of them")]:
    proc = hmdn("evaluate", f"--data_dir={run_dir / 'data'}",
                f"--saved_model={run_dir / 'export'}", extra, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert expected in last and "Traceback" not in proc.stderr


def test_run_on_users_own_csv_with_bad_rows(tmp_path):
  """`hmdn run --raw --spec` on a log the user brings, with bad rows set aside."""
  spec = tmp_path / "own.yaml"  # the user's own spec, anywhere
  spec.write_text(
      "name: own\nfeatures:\n"
      "  - {name: clicked, kind: numeric, role: label}\n"
      "  - {name: page, kind: categorical, distribution_level: 0}\n"
      "  - {name: uid, kind: categorical, user_id: true}\n"
      "  - {name: score, kind: numeric}\n")
  rng = np.random.default_rng(0)
  lines = ["clicked,page,uid,score"]
  for i in range(3000):
    page = rng.integers(0, 3)
    score = rng.normal()
    p = 1 / (1 + np.exp(-(2 * score * (1 if page else -1))))
    lines.append(f"{int(rng.random() < p)},p{page},u{rng.integers(0, 100)},{score:.4f}")
  lines += ["1,p0,u1", "x,p1,u2,0.1", "1,p1,u2,abc"]
  (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
  out = tmp_path / "run"
  hmdn("run", f"--raw={tmp_path / 'log.csv'}", f"--spec={spec}", f"--output_dir={out}",
       "--model=moe", "--epochs=3", "--batch_size=128", "--direct_num_workers=1")
  metrics = json.load(open(out / "metrics.json"))
  meta = PreprocessedData(str(out / "data")).metadata
  assert meta["rows_rejected"] == 3
  assert meta["rows_read"] == 3003
  assert metrics["auc"] > 0.7  # the click depends on score, flipped by page
  assert "oracle_auc" not in metrics


@pytest.mark.parametrize("args,expected", [
    (["run", "--spec=/nonexistent/own.yaml", "--raw=/nonexistent/*.csv"],
     "/nonexistent/own.yaml"),
    (["train", "--data_dir=/nonexistent", "--model_dir=/tmp/x"], "/nonexistent"),
    (["run", "--model=no_such_model", "--rows=100"], "no_such_model"),
    (["train", "--data_dir=/nonexistent", "--model_dir=/tmp/x", "--learning_rate=nan"],
     "--learning_rate=nan"),
    (["train", "--data_dir=/nonexistent", "--model_dir=/tmp/x", "--learning_rate=-1"],
     "--learning_rate=-1.0"),
    (["preprocess", "--spec=movielens_100k", "--raw=/nonexistent", "--source=movielens",
      "--data_dir=/tmp/x", "--split_time_field=timestamp", "--split_time_cutoff=9",
      "--eval_fraction=0.05"],
     "--eval_fraction=0.05 and --split_time_cutoff=9.0 contradict: the cutoff sets"),
    (["run", "--split_time_field=ts", "--split_time_quantile=0.9", "--eval_fraction=0.1",
      "--rows=100"],
     "--eval_fraction=0.1 and --split_time_quantile=0.9 contradict: the quantile sets"),
])
def test_bad_input_is_one_clear_line(args, expected, tmp_path):
  if args[0] == "run" and not any(a.startswith("--output_dir") for a in args):
    args = args + [f"--output_dir={tmp_path / 'out'}"]
  proc = hmdn(*args, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert expected in last and "error" in last
  assert "Traceback" not in proc.stderr
