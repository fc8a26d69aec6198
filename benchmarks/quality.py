"""Model quality: each HMDN variant against its own backbone, same data, same budget,
several seeds; prints mean and spread of AUC / logloss / GAUC and the paired deltas.

  python -m benchmarks.quality --rows=200000 --seeds=0,1,2 --pairs=moe,apg

Data are generated and preprocessed once (cached under --work_dir); every model sees
the same splits, batch size, learning rate and number of epochs. Results go to
<work_dir>/quality.json. This is a measurement, not a test: it asserts nothing.
"""
import dataclasses
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 200_000, "Synthetic rows (generated once, cached).")
flags.DEFINE_string("seeds", "0,1,2", "Training seeds (the data seed is fixed at 0).")
flags.DEFINE_string("pairs", "moe,mmoe,ple,hinet,apg,epnet",
                    "Backbones compared with their hmdn_ variant.")
flags.DEFINE_integer("epochs", 2, "Epochs for every model.")
flags.DEFINE_integer("batch_size", 512, "Global batch for every model.")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate for every model.")
flags.DEFINE_string("work_dir", "bench_out/quality", "Cache of data and results.")
flags.DEFINE_string("hmdn_config", "{}", "JSON of ModelConfig overrides for the hmdn_ "
                    "models (ablations), e.g. '{\"extraction\": \"explicit\"}'.")
flags.DEFINE_string("tag", "", "Suffix of the results file (quality<tag>.json).")


def _train_and_score(data_dir: str, model: str, seed: int, work_dir: str) -> dict:
  from features.preprocessed import PreprocessedData
  from models.registry import ModelConfig
  from pipeline import evaluate, train
  config = train.TrainConfig(
      data_dir=data_dir, model_dir=os.path.join(work_dir, "runs", f"{model}{FLAGS.tag}_{seed}"),
      model=ModelConfig(name=model, seed=seed, **(
          json.loads(FLAGS.hmdn_config) if model.startswith("hmdn_") else {})),
      batch_size=FLAGS.batch_size,
      learning_rate=FLAGS.learning_rate, epochs=FLAGS.epochs, seed=seed)
  start = time.time()
  trained = train.train(config)
  data_files = PreprocessedData(data_dir)
  m = evaluate.run(evaluate.model_predictor(trained, data_files.spec), data_files)
  return {"auc": m["auc"], "logloss": m["logloss"], "gauc": m["gauc"],
          "oracle_auc": m["oracle_auc"], "seconds": time.time() - start,
          "subgroup_auc": {k: v["auc"] for k, v in m["per_distribution"]["subgroup"].items()}}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  os.makedirs(FLAGS.work_dir, exist_ok=True)
  data_dir = common.prepare_data(FLAGS.work_dir, FLAGS.rows)
  seeds = [int(s) for s in FLAGS.seeds.split(",")]
  pairs = [p for p in FLAGS.pairs.split(",") if p]
  results = {}
  for seed in seeds:  # seeds outermost: machine noise and drift hit every model alike
    for backbone in pairs:
      for model in (backbone, f"hmdn_{backbone}"):
        results.setdefault(model, []).append(
            _train_and_score(data_dir, model, seed, FLAGS.work_dir))
        print(f"seed {seed} {model:<12} auc {results[model][-1]['auc']:.4f}", flush=True)
  rows = []
  print(f"\nhmdn overrides {FLAGS.hmdn_config}; {FLAGS.rows} rows, {FLAGS.epochs} epochs, batch {FLAGS.batch_size}, "
        f"seeds {seeds}; oracle AUC {results[pairs[0]][0]['oracle_auc']:.4f}")
  print(f"{'model':<12} {'auc mean':>9} {'± std':>7} {'logloss':>8} {'gauc':>7} "
        f"{'Δauc vs backbone (paired, mean ± std)':>40}")
  for backbone in pairs:
    for model in (backbone, f"hmdn_{backbone}"):
      auc = np.array([r["auc"] for r in results[model]])
      ll = np.array([r["logloss"] for r in results[model]])
      gauc = np.array([r["gauc"] for r in results[model]])
      delta = ""
      if model != backbone:
        d = auc - np.array([r["auc"] for r in results[backbone]])
        delta = f"{d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f}"
      print(f"{model:<12} {auc.mean():>9.4f} {auc.std(ddof=1) if len(auc) > 1 else 0:>7.4f} "
            f"{ll.mean():>8.4f} {gauc.mean():>7.4f} {delta:>40}")
      rows.append({"model": model, "auc": auc.tolist(), "logloss": ll.tolist(),
                   "gauc": gauc.tolist()})
  with open(os.path.join(FLAGS.work_dir, f"quality{FLAGS.tag}.json"), "w") as f:
    json.dump({"hmdn_config": json.loads(FLAGS.hmdn_config), "rows": FLAGS.rows, "epochs": FLAGS.epochs, "seeds": seeds,
               "batch_size": FLAGS.batch_size, "learning_rate": FLAGS.learning_rate,
               "results": results, "summary": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
