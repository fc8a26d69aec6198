"""Beam preprocessing throughput: rows/s per stage, then whole runs per worker count.

  python -m benchmarks.beam_bench [--rows=1000000] [--workers=1,2] [--tfds]
                                  [--stage_rows=200000] [--rounds=3] [--out=bench_out]

Generates a synthetic raw log once (cached in <out>/beam_raw_<rows>). Then:

1. Stages, in this process and without a runner: each step of the hot path applied to
   the same batches the job's DoFns get (read ranges -> line batches, parse a batch,
   derived features, the vocabulary / moments / distribution combiners' per-batch
   work, tf.Example serialization, TFRecord framing + gzip), each timed alone on the
   first `--stage_rows` rows, so the slowest stage is visible. The per-row reference
   (`LineParserFn.process` and `tf.train.Example` per row, the path before batching) is
   timed beside them.
2. Runs: `hmdn preprocess` in a fresh process per worker count and round (DirectRunner,
   multi_processing when workers > 1; no TFDS copy unless --tfds; the counts alternate
   over `--rounds` and the run of median throughput is reported), sampling the
   resident memory of every process of its tree every 0.2 s: the peak of the driver
   and the peak of the largest worker process are reported, and the peak of their sum.

Prints tables and writes <out>/beam_bench.json. A benchmark, not a test: numbers
depend on the machine and its load (the load average is recorded); compare ratios
within one run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, Dict, List

from benchmarks import common
from benchmarks.common import REPO_ROOT


# --- Memory of a process tree -----------------------------------------------------------
def _children(pid: int) -> List[int]:
  out = []
  try:
    for task in os.listdir(f"/proc/{pid}/task"):
      with open(f"/proc/{pid}/task/{task}/children") as f:
        out += [int(c) for c in f.read().split()]
  except OSError:
    pass
  return out


def _rss_mb(pid: int) -> float:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


def tree_rss_mb(root: int) -> Dict[int, float]:
  """Resident memory (MiB) of a process and each of its descendants, by pid."""
  out, stack = {}, [root]
  while stack:
    pid = stack.pop()
    if pid in out:
      continue
    out[pid] = _rss_mb(pid)
    stack += _children(pid)
  return out


# --- 1. Stages --------------------------------------------------------------------------
def _timed(fn: Callable[[], int], repeat: int = 1) -> float:
  """Best rows/s of `repeat` runs of fn (which returns the rows it processed)."""
  best = 0.0
  for _ in range(repeat):
    start = time.perf_counter()
    rows = fn()
    best = max(best, rows / max(time.perf_counter() - start, 1e-9))
  return best


def stage_rates(raw_glob: str, spec_path: str, stage_rows: int) -> List[Dict]:
  """rows/s of each step of the hot path, on the same batches the DoFns get."""
  import glob
  import itertools
  from hmdn.beam_jobs import config as C
  from hmdn.beam_jobs.transforms.batches import batch_len, batch_rows
  from hmdn.beam_jobs.transforms.derived import (_batch_derived, _row_wise_chain,
                                                 _train_pair_counts)
  from hmdn.beam_jobs.transforms.examples import ExampleEncoder
  from hmdn.beam_jobs.transforms.statistics import (_BatchMomentsFn, _MergeCellsFn,
                                                    column_moments, distribution_counts)
  from hmdn.beam_jobs.transforms.tfrecord_sink import tfrecord_frames
  from hmdn.beam_jobs.transforms.vocabularies import _MergeCountsFn, _column_values
  from hmdn.beam_jobs.sources import base, generic
  from hmdn.features import spec as spec_lib
  from hmdn.features.preprocessed import TRAIN
  spec = spec_lib.load_spec(spec_path)
  paths = sorted(glob.glob(raw_glob))
  headers = generic.read_headers(paths, spec, ",")
  reader = base.ReadRangeFn(csv_delimiter=",")  # CSV records, as the job reads them
  line_batches = []

  def read():
    line_batches.clear()
    n = 0
    ranges = base.csv_record_ranges(base.byte_ranges(paths, skip_header_lines=1), ",")
    for rng in ranges:
      for path, lines in reader.process(rng):
        if n >= stage_rows:
          break
        line_batches.append((path, lines))
        n += len(lines)
    return n

  results = []

  def add(stage, rate, note=""):
    results.append({"stage": stage, "rows_per_s": rate, "note": note})

  add("read ranges -> line batches", _timed(read))
  n_rows = sum(len(lines) for _, lines in line_batches)
  parser = generic.ParseRowFn(spec, C.CSV, headers, ",", "", 0.2)
  batches = []

  def parse():
    batches.clear()
    for path, lines in line_batches:
      out, _ = parser.parse_batch(path, lines)
      batches.extend(out)
    return n_rows

  add("parse a batch (decode, split, type, hash split)", _timed(parse, 2))
  sample = line_batches[:max(1, len(line_batches) // 10)]
  n_sample = sum(len(lines) for _, lines in sample)
  add("  reference: parse row by row (LineParserFn.process)", _timed(
      lambda: sum(1 for path, lines in sample for line in lines
                  for _ in parser.process((path, line)))), "the path before batching")
  for b in batches:  # the joined table entries (the join is not timed): the defaults
    for f in spec.derived_fields:
      if f.derived.has_table:
        b[1][f.name] = [f.derived.table_default] * batch_len(b)
  row_wise = [f for f in spec.derived_fields if not f.derived.has_table]
  if row_wise:
    add("derived features (crosses, buckets)", _timed(
        lambda: sum(batch_len(_batch_derived(b, row_wise)) for b in batches)))
  else:
    add("derived features", 0.0, f"spec {spec.name} has none")
  for f in spec.derived_fields:
    if f.derived.kind != spec_lib.MODE:
      continue

    def pair_counts(d=f.derived, chain=_row_wise_chain(spec, f.derived.of)):
      for b in batches:  # eval batches return at once: as in the job
        _train_pair_counts(b, d.source, d.of, chain)
      return n_rows

    add(f"mode {f.name}: (source, of) pair counts per batch", _timed(pair_counts, 2))
  if any(f.derived.has_table for f in spec.derived_fields):
    add("count_bucket / mode join", 0.0, "row by row (CoGroupByKey); not timed here")
  batches[:] = [_batch_derived(b, row_wise) for b in batches]  # what is written
  train = [b for b in batches if b[0] == TRAIN]
  n_train = sum(batch_len(b) for b in train)
  fields = spec.vocabulary_fields
  merge = _MergeCountsFn()

  def vocab():
    accs = {f.name: merge.create_accumulator() for f in fields}
    for b in train:
      for f in fields:
        merge.add_input(accs[f.name], _column_values(f, b[1][f.name]))
    return n_train

  add("vocabulary counts (Counter.update per column)", _timed(vocab, 2))
  numeric = [f.name for f in spec.model_inputs if f.kind == spec_lib.NUMERIC]
  moments = _BatchMomentsFn()

  def moments_stage():
    accs = {n: moments.create_accumulator() for n in numeric}
    for b in train:
      for n in numeric:
        accs[n] = moments.add_input(accs[n], column_moments(b[1][n]))
    return n_train

  add("numeric moments (numpy per column)", _timed(moments_stage, 2))
  dist_fields = [f.name for f in spec.distribution_fields]
  cells = _MergeCellsFn()

  def distribution():
    accs: Dict = {}
    for b in batches:
      for key, c in distribution_counts(b, dist_fields, [f.name for f in spec.labels]):
        accs[key] = cells.add_input(accs.get(key, {}), c)
    return n_rows

  add("distribution statistics", _timed(distribution, 2))
  encoder = ExampleEncoder(spec)
  serialized = []

  def serialize():
    serialized.clear()
    for b in batches:
      serialized.append(encoder.encode(b[1]))
    return n_rows

  add("tf.Example serialize (wire format, per batch)", _timed(serialize, 2))
  sample_rows = list(itertools.islice(
      (r for b in batches for _, r in batch_rows(b)), n_sample))
  add("  reference: tf.train.Example per row", _timed(
      lambda: _per_row_examples(spec, sample_rows)), "the path before batching")

  def write():
    with tempfile.TemporaryFile() as f:
      compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 31)
      for records in serialized:
        f.write(compressor.compress(tfrecord_frames(records)))
      f.write(compressor.flush())
    return n_rows

  add("TFRecord framing (crc32c) + gzip + write", _timed(write, 2))
  return results


def _per_row_examples(spec, rows) -> int:
  import tensorflow as tf
  from hmdn.features import spec as spec_lib
  from hmdn.features.preprocessed import TRAIN
  for record in rows:
    feature = {}
    for f in spec.features:
      value = record[f.name]
      if f.kind == spec_lib.NUMERIC:
        feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
      else:
        values = value if isinstance(value, list) else [value]
        feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode("utf-8") for v in values]))
    tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
  return len(rows)


# --- 2. Whole runs ----------------------------------------------------------------------
def run_preprocess(raw: str, spec: str, data_dir: str, workers: int,
                   tfds: bool) -> Dict:
  cmd = [sys.executable, "-m", "hmdn.pipeline.cli", "preprocess", f"--raw={raw}",
         f"--spec={spec}", f"--data_dir={data_dir}", f"--direct_num_workers={workers}",
         "--tfds" if tfds else "--notfds"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  peak_total, peak = 0.0, {}
  while proc.poll() is None:
    rss = tree_rss_mb(proc.pid)
    peak_total = max(peak_total, sum(rss.values()))
    for pid, mb in rss.items():
      peak[pid] = max(peak.get(pid, 0.0), mb)
    time.sleep(0.2)
  seconds = time.perf_counter() - start
  out, err = proc.communicate()
  if proc.returncode != 0:
    raise RuntimeError(f"preprocess failed ({proc.returncode}):\n{err[-3000:]}")
  job = [l for l in out.splitlines() if "Beam job done in" in l]
  beam_seconds = float(job[-1].split("done in ")[1].split("s:")[0]) if job else seconds
  from hmdn.features.preprocessed import PreprocessedData
  meta = PreprocessedData(data_dir).metadata
  others = [mb for pid, mb in peak.items() if pid != proc.pid]
  return {"workers": workers, "seconds": seconds, "beam_seconds": beam_seconds,
          "rows_read": meta["rows_read"], "rows_per_s": meta["rows_read"] / seconds,
          "beam_rows_per_s": meta["rows_read"] / beam_seconds,
          "peak_driver_mb": peak.get(proc.pid, 0.0),
          "peak_worker_mb": max(others) if others else 0.0,
          "peak_total_mb": peak_total, "progress_lines": len(out.splitlines()),
          "rows_written": meta["rows_written"], "rows_rejected": meta["rows_rejected"]}


def _median_run(runs: List[Dict]) -> Dict:
  """The run of median Beam throughput (its memory and counts come with it)."""
  ordered = sorted(runs, key=lambda r: r["beam_rows_per_s"])
  return ordered[(len(ordered) - 1) // 2]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--stage_rows", type=int, default=200_000)
  parser.add_argument("--rounds", type=int, default=3,
                      help="runs per worker count, alternating; medians reported")
  parser.add_argument("--tfds", action="store_true", help="also write the TFDS copy")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench_out"))
  args = parser.parse_args(argv)
  from hmdn.beam_jobs import synthetic_logs
  raw_dir = os.path.join(args.out, f"beam_raw_{args.rows}")
  from hmdn.beam_jobs import generated_logs
  if not os.path.exists(generated_logs.summary_path(raw_dir)):
    print(f"generating {args.rows} synthetic rows into {raw_dir} (once; cached)",
          flush=True)
    synthetic_logs.generate(raw_dir, synthetic_logs.GeneratorConfig(rows=args.rows,
                                                                    seed=0))
  raw = common.generated_raw(raw_dir)
  spec = synthetic_logs.SPEC_PATH  # what the generator copies beside its CSV files
  load_before = common.load_average()
  stages = stage_rates(raw, spec, args.stage_rows) if args.stage_rows > 0 else []
  if stages:
    slowest = min((s for s in stages if s["rows_per_s"] > 0
                   and not s["stage"].startswith(" ")), key=lambda s: s["rows_per_s"])
    print(f"\nstages (one process, {args.stage_rows} rows; slowest: "
          f"{slowest['stage']})")
    print(common.format_table(["stage", "rows/s", "note"], [
        [s["stage"], f"{s['rows_per_s']:,.0f}" if s["rows_per_s"] else "-", s["note"]]
        for s in stages]))
  counts = [int(w) for w in args.workers.split(",")]
  runs: Dict[int, List[Dict]] = {w: [] for w in counts}
  for r in range(args.rounds):  # worker counts alternate: load drifts hit them alike
    for workers in counts:
      data_dir = os.path.join(args.out, f"beam_data_{args.rows}_w{workers}")
      print(f"\npreprocess {args.rows} rows, DirectRunner, {workers} worker(s), round "
            f"{r + 1}/{args.rounds} ...", flush=True)
      runs[workers].append(run_preprocess(raw, spec, data_dir, workers, args.tfds))
  results = [_median_run(runs[w]) for w in counts]
  base = results[0]["beam_rows_per_s"] if results else 0.0
  print(f"\nruns ({args.rows} rows, {'with' if args.tfds else 'no'} TFDS copy; "
        f"median of {args.rounds} round(s); 'beam' = the Beam job alone, from its final "
        "line; wall = the whole command)")
  print(common.format_table(
      ["workers", "rows", "wall s", "rows/s wall", "beam s", "rows/s beam",
       f"x {results[0]['workers'] if results else 1}w", "per round x",
       "driver MiB", "worker MiB", "total MiB"],
      [[r["workers"], r["rows_read"], f"{r['seconds']:.1f}", f"{r['rows_per_s']:,.0f}",
        f"{r['beam_seconds']:.1f}", f"{r['beam_rows_per_s']:,.0f}",
        f"{r['beam_rows_per_s'] / base:.2f}" if base else "-",
        " ".join(f"{a['beam_rows_per_s'] / b['beam_rows_per_s']:.2f}"
                 for a, b in zip(runs[r["workers"]], runs[counts[0]])),
        f"{r['peak_driver_mb']:.0f}", f"{r['peak_worker_mb']:.0f}",
        f"{r['peak_total_mb']:.0f}"] for r in results]))
  report = {"benchmark": "beam_preprocess", "runner": "DirectRunner "
            "(multi_processing when workers > 1)", "rows": args.rows,
            "tfds": args.tfds, "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": common.load_average(),
            "stages": stages, "results": results, "rounds": runs,
            "note": "peak_worker_mb: the largest worker process (with 1 worker the job "
                    "runs in the driver); peak_total_mb sums the process tree"}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "beam_bench.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {os.path.join(args.out, 'beam_bench.json')}")


if __name__ == "__main__":
  main()
