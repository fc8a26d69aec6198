"""What the built-in generators share: CSV shards published whole, cell formatting, and
a streaming AUC of the true click probabilities (the oracle AUC). Numpy only."""
import os
from typing import List, Mapping, Sequence

import numpy as np

SHARD_PATTERN = "part-{:05d}.csv"
# A generator's output directory: raw/part-*.csv, the spec beside them, its summary.
RAW_DIR = "raw"
SPEC_FILE = "spec.yaml"
SUMMARY_FILE = "generator.json"


def raw_dir(output_dir: str) -> str:
  return os.path.join(output_dir, RAW_DIR)


def raw_glob(output_dir: str) -> str:
  """The CSV files a generator writes (the `--raw` of the preprocessing job)."""
  return os.path.join(output_dir, RAW_DIR, "part-*.csv")


def spec_path(output_dir: str) -> str:
  return os.path.join(output_dir, SPEC_FILE)


def summary_path(output_dir: str) -> str:
  return os.path.join(output_dir, SUMMARY_FILE)


def format_column(column: np.ndarray) -> List[str]:
  """CSV cells of one column: floats with 6 significant digits, the rest as str."""
  if column.dtype.kind == "f":
    return [f"{v:.6g}" for v in column]
  return [str(v) for v in column]


class CsvShards:
  """Writes `raw_dir/part-NNNNN.csv` files of `rows_per_file` rows each (header first),
  under temporary names; `publish` renames them into place and removes the part files
  of an earlier, larger run, so a `raw/*.csv` glob never mixes two runs. How the rows
  arrive (chunk sizes) does not change the files."""

  def __init__(self, raw_dir: str, names: Sequence[str], rows_per_file: int,
               total_rows: int):
    if rows_per_file < 1:
      raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    os.makedirs(raw_dir, exist_ok=True)
    self._dir = raw_dir
    self._names = list(names)
    self._rows_per_file = rows_per_file
    self._total = total_rows
    self._written = 0
    self._out = None
    self.paths: List[str] = []

  def write(self, columns: Mapping[str, np.ndarray]) -> None:
    formatted = [format_column(columns[name]) for name in self._names]
    lines = [",".join(row) + "\n" for row in zip(*formatted)]
    start = 0
    while start < len(lines):
      if self._out is None:
        path = os.path.join(self._dir, SHARD_PATTERN.format(len(self.paths)))
        self.paths.append(path)
        self._out = open(path + ".tmp", "w")
        self._out.write(",".join(self._names) + "\n")
      room = self._rows_per_file - self._written % self._rows_per_file
      take = min(len(lines) - start, room)
      self._out.write("".join(lines[start:start + take]))
      start += take
      self._written += take
      if self._written % self._rows_per_file == 0 or self._written == self._total:
        self._out.close()
        self._out = None

  def publish(self) -> List[str]:
    if self._out is not None:
      self._out.close()
      self._out = None
    for path in self.paths:
      os.replace(path + ".tmp", path)
    for name in os.listdir(self._dir):
      path = os.path.join(self._dir, name)
      if name.startswith("part-") and name.endswith(".csv") and path not in self.paths:
        os.remove(path)
    return self.paths


class BinnedAuc:
  """Streaming AUC over probabilities in [0, 1]: counts per fine bin, memory flat."""

  def __init__(self, bins: int = 200_000):
    self.pos = np.zeros(bins)
    self.neg = np.zeros(bins)

  def update(self, labels: np.ndarray, probs: np.ndarray):
    idx = np.minimum((probs * len(self.pos)).astype(int), len(self.pos) - 1)
    self.pos += np.bincount(idx, weights=labels, minlength=len(self.pos))
    self.neg += np.bincount(idx, weights=1 - labels, minlength=len(self.pos))

  def result(self) -> float:
    neg_below = np.cumsum(self.neg) - self.neg
    total = self.pos.sum() * self.neg.sum()
    if total == 0:
      return float("nan")
    return float((self.pos * (neg_below + 0.5 * self.neg)).sum() / total)
