"""Several tasks, paired over seeds: each model's click AUC, CVR AUC (over clicked rows)
and CTCVR AUC (over every row), overall and per leaf-size decile, on one data directory.

The runs are `hmdn compare`'s (`compare.run_config`: the same data, budget and seeds
for every model, each model's own run directory); this scores every task of them.

  python -m benchmarks.task_evidence --data_dir=DIR --report_dir=OUT \\
      --models=mmoe,hmdn_mmoe,esmm,esmm:cvr_loss=masked --seeds=0,1,2,3,4 --epochs=1

writes OUT/task_results.json and OUT/task_report.md (mean ± std over seeds and the
paired deltas of each HMDN-X against X, and of every model against the first).
"""
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np

from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData
from hmdn.models.tasks import tasks_of


def _columns(model, data: PreprocessedData) -> Dict[str, np.ndarray]:
  """Every task's label and probabilities, and the distribution fields, of the eval
  split, in one pass."""
  import tensorflow as tf
  from hmdn.pipeline import data as data_lib
  spec = data.spec
  names = [f.name for f in spec.labels] + [f.name for f in spec.distribution_fields]
  parse_spec = {k: v for k, v in spec.parsing_spec().items() if k in names}
  ds = tf.data.TFRecordDataset(data_lib.files_of(data, EVAL), compression_type="GZIP")
  out: Dict[str, List[np.ndarray]] = {}
  predict = tf.function(lambda s: model(data_lib.parse_batch(s, spec, for_serving=True)))
  for serialized in ds.batch(8192):
    pred = predict(serialized)
    parsed = tf.io.parse_example(serialized, parse_spec)
    for k in names:
      out.setdefault(k, []).append(parsed[k].numpy())
    for k, v in pred.items():
      if k.startswith("probability_"):
        out.setdefault(k, []).append(v.numpy()[:, 0])
  return {k: np.concatenate(v) for k, v in out.items()}


def score(columns, spec, sizes) -> Dict:
  """{metric: value, "deciles": {metric: [per decile]}} for every task."""
  from hmdn.pipeline import compare, metrics
  leaves = compare.leaf_key(columns, spec)
  result, deciles = {}, {}
  for t in tasks_of(spec):
    y = columns[t.name]
    key = t.name if t.after is None else f"{t.name}_ctcvr"
    result[key] = metrics.auc(y, columns[f"probability_{t.name}"])
    deciles[key] = metrics.leaf_size_deciles(y, columns[f"probability_{t.name}"],
                                             leaves, sizes)
    if t.after is not None:
      clicked = columns[t.after_name] == 1
      p = columns[f"probability_{t.given}"]
      result[f"{t.name}_cvr"] = metrics.auc(y[clicked], p[clicked])
      deciles[f"{t.name}_cvr"] = metrics.leaf_size_deciles(
          y[clicked], p[clicked], leaves[clicked], sizes)
  result["deciles"] = {k: [d["auc"] for d in v] for k, v in deciles.items()}
  result["decile_sizes"] = {k: [f"{d['size_min']}-{d['size_max']}" for d in v]
                            for k, v in deciles.items()}
  return result


def _mean_std(values):
  values = np.asarray(values, float)
  return float(np.nanmean(values)), float(np.nanstd(values, ddof=1)) if len(values) > 1 \
      else 0.0


def report(results: Dict[str, List[Dict]], labels: List[str]) -> str:
  metrics_ = [k for k in results[labels[0]][0] if k not in ("deciles", "decile_sizes",
                                                            "seed", "seconds")]
  lines = ["| model | " + " | ".join(metrics_) + " | s/run |",
           "|---|" + "---|" * (len(metrics_) + 1)]
  for label in labels:
    runs = results[label]
    cells = ["%.4f ± %.4f" % _mean_std([r[m] for r in runs]) for m in metrics_]
    lines.append(f"| {label} | " + " | ".join(cells) +
                 f" | {np.mean([r['seconds'] for r in runs]):.0f} |")
  lines += ["", "Paired deltas (mean ± std over seeds, wins/seeds):", "",
            "| model - reference | " + " | ".join(metrics_) + " |",
            "|---|" + "---|" * len(metrics_)]
  pairs = [(label, label[len("hmdn_"):].split(":")[0]) for label in labels
           if label.startswith("hmdn_")]
  pairs += [(label, labels[0]) for label in labels[1:]]
  for mine, ref in dict.fromkeys(pairs):  # an HMDN-X of a first X: one row, not two
    if ref not in results or mine == ref:
      continue
    cells = []
    for m in metrics_:
      d = [a[m] - b[m] for a, b in zip(results[mine], results[ref])]
      mean, std = _mean_std(d)
      cells.append(f"{mean:+.4f} ± {std:.4f} ({sum(x > 0 for x in d)}/{len(d)})")
    lines.append(f"| {mine} - {ref} | " + " | ".join(cells) + " |")
  first = results[labels[0]][0]
  for m, sizes in first["decile_sizes"].items():
    lines += ["", f"{m} AUC per leaf-size decile (train rows of the leaf; rarest first):",
              "", "| model | " + " | ".join(sizes) + " |", "|---|" + "---|" * len(sizes)]
    for label in labels:
      per = np.nanmean(np.array([r["deciles"][m] for r in results[label]], float), 0)
      lines.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in per) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  from absl import flags
  from hmdn.pipeline import compare, train
  from hmdn.pipeline.train_config import TrainConfig
  flags.DEFINE_string("data_dir", None, "preprocessed data of several tasks")
  flags.DEFINE_string("report_dir", None, "where the runs and the report go")
  flags.DEFINE_list("models", ["mmoe", "hmdn_mmoe"], "model labels, NAME:key=value")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds")
  flags.DEFINE_integer("epochs", 1, "epochs of every run")
  flags.FLAGS(argv)
  f = flags.FLAGS
  data = PreprocessedData(f.data_dir).check_complete()
  sizes = compare.train_leaf_sizes(data)
  base = TrainConfig(data_dir=f.data_dir, model_dir=f.report_dir, epochs=f.epochs)
  os.makedirs(f.report_dir, exist_ok=True)
  path = os.path.join(f.report_dir, "task_results.json")
  results = json.load(open(path)) if os.path.exists(path) else {}
  for seed in map(int, f.seeds):
    for label in f.models:
      runs = results.setdefault(label, [])
      if any(r["seed"] == seed for r in runs):
        continue  # measured before: the runs of a report are resumed, not repeated
      config = compare.run_config(base, label, seed, f.report_dir)
      import tensorflow as tf
      tf.keras.backend.clear_session()
      start = time.time()
      model = train.train(config)
      seconds = time.time() - start
      r = score(_columns(model, data), data.spec, sizes)
      r.update(seed=seed, seconds=seconds)
      runs.append(r)
      print(f"task_evidence: seed {seed} {label:<32} " + "  ".join(
          f"{k} {v:.4f}" for k, v in r.items() if isinstance(v, float) and k != "seconds"),
          f"({seconds:.0f} s)", flush=True)
      with open(path + ".tmp", "w") as out:
        json.dump(results, out)
      os.replace(path + ".tmp", path)
  labels = [m for m in f.models if results.get(m)]
  with open(os.path.join(f.report_dir, "task_report.md"), "w") as out:
    out.write(f"Data: {f.data_dir} ({data.rows(TRAIN)} train / {data.rows(EVAL)} eval "
              f"rows), {f.epochs} epoch(s), seeds {','.join(f.seeds)}.\n\n")
    out.write(report(results, labels))
  print(open(os.path.join(f.report_dir, "task_report.md")).read())


if __name__ == "__main__":
  main(sys.argv)
