"""What the built-in generators share: CSV shards published whole, cell formatting, a
streaming AUC of the true probabilities (the oracle AUC), the conversion task's spec
fields and summary, and the NMI of two labelings. Numpy only."""
import os
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np

from hmdn.features import spec as spec_lib

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


# --- The conversion task (a purchase observed only after a click) ---------------------
PURCHASE = "purchase"
TRUE_CVR = "true_cvr"
CONVERSION_RATE_HELP = (
    "Mean share of clicks that convert (a `purchase` label, observed only after a "
    "click, with its true p(purchase | click) as `true_cvr`); 0: no conversion label "
    "(the one-task log). Real logs: 0.02-0.05.")
CONVERSION_CORRELATION_HELP = (
    "Correlation of each node's conversion effects with its click effects (the "
    "deviation from its parent's: rho * click's + sqrt(1 - rho^2) * its own).")


def with_conversion(spec: "spec_lib.FeatureSpec") -> "spec_lib.FeatureSpec":
  """The spec with the conversion task: `purchase` (a label after the first) and its
  oracle `true_cvr` (task purchase), right after the first task's oracle."""
  first = spec.label.name
  added = (spec_lib.Feature(PURCHASE, spec_lib.NUMERIC, role=spec_lib.LABEL, after=first),
           spec_lib.Feature(TRUE_CVR, spec_lib.NUMERIC, role=spec_lib.ORACLE,
                            task=PURCHASE))
  at = spec.names.index(spec.oracle.name) + 1
  features = spec.features[:at] + added + spec.features[at:]
  return spec_lib.FeatureSpec(name=spec.name, features=features, source=spec.source)


def calibrate(mean_at: Callable[[float], float], target: float) -> float:
  """The shift s with mean_at(s) == target, for mean_at increasing (bisection)."""
  lo, hi = -20.0, 20.0
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if mean_at(mid) < target:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def correlated(rng: np.random.Generator, click_noise: np.ndarray, scale,
               rho: float) -> np.ndarray:
  """A node's conversion noise: rho * its click noise (of std `scale`) + sqrt(1 - rho^2)
  * fresh noise of the same std, so it keeps the click's scale per level."""
  fresh = np.asarray(scale) * rng.normal(0, 1, click_noise.shape)
  return rho * click_noise + np.sqrt(1.0 - rho * rho) * fresh


class ConversionSummary:
  """The conversion task's figures: purchases, CVR over clicks and CTCVR over rows,
  the CVR oracle AUC over clicked rows and the CTCVR oracle AUC over all rows."""

  def __init__(self):
    self.purchases = 0
    self.clicks = 0
    self.rows = 0
    self.cvr_auc = BinnedAuc()
    # p(ctr) * p(cvr) is small: AUC is rank-only, so bin its square root (finer bins
    # where the mass is).
    self.ctcvr_auc = BinnedAuc()

  def update(self, click: np.ndarray, purchase: np.ndarray, true_ctr: np.ndarray,
             true_cvr: np.ndarray) -> None:
    clicked = click == 1
    self.purchases += int(purchase.sum())
    self.clicks += int(clicked.sum())
    self.rows += len(click)
    self.cvr_auc.update(purchase[clicked], true_cvr[clicked])
    self.ctcvr_auc.update(purchase, np.sqrt(true_ctr * true_cvr))

  def result(self) -> Dict[str, float]:
    return {
        "purchases": self.purchases,
        "cvr": self.purchases / max(self.clicks, 1),
        "ctcvr": self.purchases / max(self.rows, 1),
        "oracle_auc_purchase_cvr": self.cvr_auc.result(),
        "oracle_auc_purchase_ctcvr": self.ctcvr_auc.result(),
    }


def normalized_mutual_information(counts: np.ndarray) -> float:
  """NMI = I(a; b) / sqrt(H(a) H(b)) (as pipeline.metrics computes it from the labels)
  of the two labelings whose joint counts are `counts` [values of a, values of b];
  0 when either is constant."""
  p = np.asarray(counts, dtype=float)
  if p.sum() == 0:
    return float("nan")
  p = p / p.sum()
  pa, pb = p.sum(1), p.sum(0)
  nz = p > 0
  mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
  ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
  hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
  return mi / float(np.sqrt(ha * hb)) if ha > 0 and hb > 0 else 0.0
