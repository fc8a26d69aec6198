"""Beam history throughput: rows/s per worker of the keyed, time-ordered history step.

  python -m benchmarks.history_bench [--rows=1000000] [--max_length=50] [--users=20000]
                                     [--hot_share=0.1] [--job_rows=200000]
                                     [--out=bench_out]

A synthetic log of `--rows` rows (Zipf users, one hot user holding `--hot_share` of the
rows, random times with ties, an item and a category each) as record batches, then:

1. stage: `histories_of_key` over the rows grouped per user, in this process (the
   per-key work of the step: sort, two in-step histories of `--max_length`);
2. transform: `AddHistories` (key, GroupByKey, histories, batches) on the local
   engine with one worker, the log's batches made in the worker; the same pipeline
   without the step is timed too, and the step's rate is rows over the difference;
3. job: `hmdn preprocess` on `--job_rows` rows of the same log written as CSV with a
   spec holding the two histories, in a fresh process with one worker (parse,
   histories, tf.Example with 2 x 50-long bytes lists, vocabularies, statistics),
   with its peak resident memory. 0 skips it.

Prints one line per measurement and writes <out>/history_bench.json. A benchmark, not
a test: the numbers depend on the machine and its load (the load average is recorded).
"""
import argparse
import json
import os
import sys
import time
from typing import Dict

import numpy as np

from benchmarks import beam_bench
from benchmarks.common import REPO_ROOT

SPEC = """name: history_bench
features:
  - {{name: click, kind: numeric, role: label}}
  - {{name: ts, kind: numeric, role: passthrough}}
  - {{name: user_id, kind: categorical, user_id: true}}
  - {{name: item_id, kind: categorical}}
  - {{name: cat, kind: categorical}}
  - {{name: hist_items, kind: sequence, vocab_from: item_id, max_length: {n},
     derived: {{kind: history, source: user_id, of: item_id, order_by: ts}}}}
  - {{name: hist_cats, kind: sequence, vocab_from: cat, max_length: {n},
     derived: {{kind: history, source: user_id, of: cat, order_by: ts}}}}
"""


def make_log(rows: int, users: int, hot_share: float, seed: int = 0) -> Dict[str, list]:
  """Columns of a synthetic log: Zipf users (u0 the hot one), times with ties."""
  rng = np.random.default_rng(seed)
  user = np.minimum(rng.zipf(1.3, rows), users - 1)
  user[rng.random(rows) < hot_share] = 0
  return {"click": (rng.random(rows) < 0.2).astype(float).tolist(),
          "ts": rng.integers(0, rows // 2, rows).astype(float).tolist(),
          "user_id": [f"u{u}" for u in user],
          "item_id": [f"i{i}" for i in rng.zipf(1.2, rows) % 50_000],
          "cat": [f"c{c}" for c in rng.integers(0, 40, rows)]}


def _history(max_length: int):
  from hmdn.beam_jobs.transforms.history import History
  return History(outputs=("hist_items", "hist_cats"), key="user_id",
                 of=("item_id", "cat"), order_by="ts", max_length=max_length)


def stage_rate(columns: Dict[str, list], max_length: int) -> Dict:
  """histories_of_key over every user's rows, in this process."""
  from hmdn.beam_jobs.transforms.history import histories_of_key
  history = _history(max_length)
  names = list(columns)
  groups: Dict[str, list] = {}
  for row in zip(*columns.values()):
    record = dict(zip(names, row))
    groups.setdefault(record["user_id"], []).append(("train", record))
  start = time.perf_counter()
  done = 0
  for rows in groups.values():
    for _ in histories_of_key(rows, history):
      done += 1
  seconds = time.perf_counter() - start
  hot = max(len(g) for g in groups.values())
  return {"what": "stage", "rows": done, "seconds": seconds, "rows_per_s": done / seconds,
          "users": len(groups), "hot_user_rows": hot}


def _log_batch(index: int, rows: int, users: int, hot_share: float, size: int = 1024):
  """The `index`-th batch of a log made in the worker (a log handed to beam.Create is
  pickled, compressed and type-inferred whole: that would be timed instead)."""
  n = min(size, rows - index * size)
  return [("train", make_log(n, users, hot_share, seed=index))]


def _pipeline_seconds(rows: int, users: int, hot_share: float, max_length: int,
                      with_history: bool) -> float:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from hmdn.beam_jobs.local_runner import local_runner
  from hmdn.beam_jobs.transforms.history import AddHistories
  options = PipelineOptions(["--default_sdk_harness_log_level=ERROR"])
  start = time.perf_counter()
  p = beam.Pipeline(runner=local_runner(options), options=options)
  batches = (p | beam.Create(list(range((rows + 1023) // 1024)))
             | beam.FlatMap(_log_batch, rows, users, hot_share))
  if with_history:
    batches, _ = batches | AddHistories(_history(max_length))
  counted = batches | beam.Map(lambda b: len(b[1]["ts"]))
  _ = counted | beam.CombineGlobally(sum) | beam.Map(_check_total, rows)
  p.run().wait_until_finish()
  return time.perf_counter() - start


def transform_rate(rows: int, users: int, hot_share: float, max_length: int) -> Dict:
  """AddHistories on the local engine, one worker, the log made in the worker; the
  same pipeline without the step is timed too, and the step's own rate is rows over
  the difference."""
  base = _pipeline_seconds(rows, users, hot_share, max_length, False)
  seconds = _pipeline_seconds(rows, users, hot_share, max_length, True)
  return {"what": "transform", "rows": rows, "seconds": seconds,
          "baseline_seconds": base, "rows_per_s": rows / max(seconds - base, 1e-9),
          "whole_pipeline_rows_per_s": rows / seconds, "workers": 1}


def _check_total(n, rows):
  if n != rows:
    raise RuntimeError(f"the pipeline wrote {n} rows of {rows}")
  return n


def job_rate(columns: Dict[str, list], rows: int, max_length: int, out: str) -> Dict:
  """`hmdn preprocess` on the first `rows` rows as CSV, one worker, fresh process."""
  os.makedirs(out, exist_ok=True)
  raw = os.path.join(out, f"history_raw_{rows}.csv")
  spec = os.path.join(out, f"history_bench_{max_length}.yaml")
  with open(spec, "w") as f:
    f.write(SPEC.format(n=max_length))
  names = ["click", "ts", "user_id", "item_id", "cat"]
  with open(raw, "w") as f:
    f.write(",".join(names) + "\n")
    for row in zip(*(columns[n][:rows] for n in names)):
      f.write(f"{int(row[0])},{int(row[1])},{row[2]},{row[3]},{row[4]}\n")
  data_dir = os.path.join(out, "history_data")
  import shutil
  shutil.rmtree(data_dir, ignore_errors=True)
  run = beam_bench.run_preprocess(raw, spec, data_dir, workers=1, tfds=False)
  from hmdn.features.preprocessed import PreprocessedData
  seq = PreprocessedData(data_dir).stats.get("sequences", {})
  run.update(what="job", rows=rows, sequences=seq)
  return run


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--max_length", type=int, default=50)
  parser.add_argument("--users", type=int, default=20_000)
  parser.add_argument("--hot_share", type=float, default=0.1)
  parser.add_argument("--job_rows", type=int, default=200_000)
  parser.add_argument("--skip", default="", help="comma-separated: stage,transform,job")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench_out"))
  args = parser.parse_args(argv)
  skip = set(filter(None, args.skip.split(",")))
  columns = make_log(args.rows, args.users, args.hot_share)
  results = {"rows": args.rows, "max_length": args.max_length,
             "load_average": os.getloadavg(), "runs": []}
  steps = [("stage", lambda: stage_rate(columns, args.max_length)),
           ("transform", lambda: transform_rate(args.rows, args.users, args.hot_share,
                                                args.max_length))]
  if args.job_rows:
    steps.append(("job", lambda: job_rate(columns, args.job_rows, args.max_length,
                                          args.out)))
  for name, step in steps:
    if name in skip:
      continue
    r = step()
    results["runs"].append(r)
    extra = (f"; hot user {r['hot_user_rows']:,} rows of {r['users']:,} users"
             if name == "stage" else
             f" (the step alone; whole pipeline {r['whole_pipeline_rows_per_s']:,.0f} "
             f"rows/s, {r['baseline_seconds']:.1f} s without the step)"
             if name == "transform" else
             f"; peak worker {r['peak_worker_mb']:.0f} MiB, driver "
             f"{r['peak_driver_mb']:.0f} MiB" if name == "job" else "")
    print(f"{name:9s} {r['rows']:>9,} rows  {r['seconds']:7.1f} s  "
          f"{r['rows_per_s']:>9,.0f} rows/s per worker{extra}", flush=True)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "history_bench.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=1, default=str)
  print(f"wrote {path}")


if __name__ == "__main__":
  main(sys.argv[1:])
