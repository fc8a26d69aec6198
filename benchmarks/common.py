"""What the benchmarks share: the cached dataset, robust statistics, tables.

The data are generated and preprocessed once with the project's own API and reused by
every benchmark (and every run), so timings never include the Beam job.
"""
import os
import resource
import statistics
from typing import Iterable, List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generated_raw(generated_dir: str) -> str:
  """The CSV files `synthetic_logs.generate(generated_dir, ...)` writes."""
  from hmdn.beam_jobs import generated_logs
  return generated_logs.raw_glob(generated_dir)


def prepare_data(out_dir: str, rows: int) -> str:
  """`<out_dir>/data_<rows>`, generated and preprocessed unless already complete.

  The Beam job writes its completion marker last (features/preprocessed.py), so a run
  killed half-way is simply redone.
  """
  from hmdn.features.preprocessed import PreprocessedData
  data_dir = os.path.join(out_dir, f"data_{rows}")
  if not PreprocessedData(data_dir).is_complete():
    from hmdn.beam_jobs import preprocess, synthetic_logs
    from hmdn.beam_jobs.config import PreprocessConfig
    raw = os.path.join(out_dir, f"raw_{rows}")
    print(f"generating {rows} synthetic rows and preprocessing them into {data_dir} "
          "(once; cached)", flush=True)
    synthetic_logs.generate(raw, synthetic_logs.GeneratorConfig(rows=rows, seed=0))
    # The generator writes a copy of its shipped spec; read the original.
    preprocess.run(PreprocessConfig(
        raw=generated_raw(raw), output_dir=data_dir,
        spec_path=synthetic_logs.SPEC_PATH, direct_num_workers=2))
  return data_dir


def median(values: Iterable[float]) -> float:
  values = list(values)
  return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
  """Linear-interpolated percentile (numpy's default), without needing numpy here."""
  ordered = sorted(values)
  if not ordered:
    return float("nan")
  pos = (len(ordered) - 1) * q / 100.0
  lo = int(pos)
  hi = min(lo + 1, len(ordered) - 1)
  return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def max_rss_mb() -> float:
  """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> list:
  """1/5/15-minute load averages: how busy the shared machine was around a measurement."""
  return [round(x, 2) for x in os.getloadavg()]


def format_table(headers: Sequence[str], rows: List[Sequence]) -> str:
  """A plain fixed-width table: first column left-aligned, the others right-aligned."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

  def line(r):
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths)))
  rule = "  ".join("-" * w for w in widths)
  return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
