"""The trainer, evaluation, export, serving and the CLI run without Apache Beam: the
data directory is read through features/preprocessed.py, never through the Beam job."""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, sys
    data_dir, export_root = sys.argv[1], sys.argv[2]
    import hmdn.features
    from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData
    from hmdn.models.registry import ModelConfig
    from hmdn.pipeline import cli, data, evaluate, export, serving, train

    contract = PreprocessedData(data_dir)
    spec, stats = contract.spec, contract.stats
    config = ModelConfig.of(name="hmdn_moe", output_dim=8, num_levels=2, codebook_size=4)
    model = train.build_model(data_dir, config)
    metrics = evaluate.run(evaluate.model_predictor(model, spec), contract,
                           config.codebook_size, config.code_views)
    version = export.export(model, spec, export_root,
                            data.first_records(contract, EVAL, 2))
    reloaded = evaluate.run(evaluate.saved_model_predictor(
        serving.latest_version(export_root)), contract)
    # The CLI's error handler on a bad data directory: one line, exit status 2.
    try:
      cli.FLAGS(["hmdn", "--data_dir=/nonexistent/data", "--model_dir=/tmp/unused"])
      cli.main(["hmdn", "train"])
      exit_code = 0
    except SystemExit as e:
      exit_code = e.code
    print(json.dumps({
        "beam_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "apache_beam"),
        "rows": [contract.rows(TRAIN), contract.rows(EVAL)],
        "auc": metrics["auc"], "reloaded_auc": reloaded["auc"],
        "rows_eval": metrics["rows_eval"], "codes": sorted(metrics.get("codes", {})),
        "exit_code": exit_code, "numeric": sorted(stats["numeric"])}))
    """)


def test_trainer_evaluate_export_serving_and_cli_never_import_beam(planted_data_dir,
                                                                    tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-c", SCRIPT, planted_data_dir, str(tmp_path / "export")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["beam_loaded"] == [], out["beam_loaded"]
  # It did read the data: the split sizes, the whole eval split, the stats.
  assert out["rows_eval"] == out["rows"][1] > 0 and out["rows"][0] > 0
  assert out["numeric"], "numeric moments come from stats"
  assert 0.0 < out["auc"] < 1.0
  # The export scores exactly like the in-memory model (same serving function).
  assert abs(out["auc"] - out["reloaded_auc"]) < 1e-6
  assert out["codes"] == ["explicit/level_1", "explicit/level_2", "implicit/level_1",
                          "implicit/level_2"]
  assert out["exit_code"] == 2  # handled as a user error, without loading Beam
  assert "/nonexistent/data" in proc.stderr.strip().splitlines()[-1]
