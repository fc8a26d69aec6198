"""Beam preprocessing throughput: rows/s and peak memory on the DirectRunner.

  python -m benchmarks.beam_bench [--rows=1000000] [--workers=1,2] [--out=bench_out]

Generates a synthetic raw log once (cached in <out>/beam_raw_<rows>), then runs
`hmdn preprocess` on it in a fresh process per worker count, sampling the resident
memory of that process and all its descendants (the DirectRunner's worker processes)
every 0.2 s. Peak memory is the largest SUM over the process tree. Prints a table and
writes <out>/beam_bench.json. A benchmark, not a test: numbers depend on the machine.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

from benchmarks import common
from benchmarks.common import REPO_ROOT


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


def tree_rss_mb(root: int) -> float:
  """Resident memory of a process and all its descendants, in MiB."""
  total, stack, seen = 0.0, [root], set()
  while stack:
    pid = stack.pop()
    if pid in seen:
      continue
    seen.add(pid)
    total += _rss_mb(pid)
    stack += _children(pid)
  return total


def run_preprocess(raw: str, spec: str, data_dir: str, workers: int) -> Dict:
  cmd = [sys.executable, "-m", "pipeline.cli", "preprocess", f"--raw={raw}",
         f"--spec={spec}", f"--data_dir={data_dir}", f"--direct_num_workers={workers}"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  peak = 0.0
  while proc.poll() is None:
    peak = max(peak, tree_rss_mb(proc.pid))
    time.sleep(0.2)
  seconds = time.perf_counter() - start
  _, err = proc.communicate()
  if proc.returncode != 0:
    raise RuntimeError(f"preprocess failed ({proc.returncode}):\n{err[-3000:]}")
  from features.preprocessed import PreprocessedData
  meta = PreprocessedData(data_dir).metadata
  return {"workers": workers, "seconds": seconds, "rows_read": meta["rows_read"],
          "rows_per_s": meta["rows_read"] / seconds, "peak_rss_mb": peak,
          "rows_written": meta["rows_written"], "rows_rejected": meta["rows_rejected"]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench_out"))
  args = parser.parse_args(argv)
  from beam_jobs import synthetic_logs
  raw_dir = os.path.join(args.out, f"beam_raw_{args.rows}")
  if not os.path.exists(os.path.join(raw_dir, "generator.json")):
    print(f"generating {args.rows} synthetic rows into {raw_dir} (once; cached)",
          flush=True)
    synthetic_logs.generate(raw_dir, synthetic_logs.GeneratorConfig(rows=args.rows,
                                                                    seed=0))
  raw = common.generated_raw(raw_dir)
  spec = synthetic_logs.SPEC_PATH  # what the generator copies beside its CSV files
  results = []
  for workers in [int(w) for w in args.workers.split(",")]:
    data_dir = os.path.join(args.out, f"beam_data_{args.rows}_w{workers}")
    print(f"preprocess {args.rows} rows, DirectRunner, {workers} worker(s) ...",
          flush=True)
    results.append(run_preprocess(raw, spec, data_dir, workers))
  lines = [f"{'workers':>7} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'peak MiB':>9}"]
  for r in results:
    lines.append(f"{r['workers']:>7d} {r['rows_read']:>9d} {r['seconds']:>8.1f} "
                 f"{r['rows_per_s']:>8.0f} {r['peak_rss_mb']:>9.0f}")
  print("\n".join(lines))
  report = {"benchmark": "beam_preprocess", "runner": "DirectRunner "
            "(multi_processing when workers > 1)", "rows": args.rows,
            "cpu_count": os.cpu_count(), "results": results,
            "note": "peak_rss_mb sums the driver and its worker processes; the job "
                    "writes gzip TFRecords, the TFDS copy, vocabularies and stats"}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "beam_bench.json"), "w") as f:
    json.dump(report, f, indent=1)
  print(f"wrote {os.path.join(args.out, 'beam_bench.json')}")


if __name__ == "__main__":
  main()
