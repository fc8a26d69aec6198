"""Offline metrics in NumPy: AUC, logloss, GAUC and per-distribution breakdowns.

Computed on the whole evaluation set at once (not streamed per batch like Keras' AUC),
so they are exact and identical whatever the batch size or the strategy.
"""
from typing import Dict, List, Mapping, Sequence

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC AUC with ties counted half (Mann-Whitney U); NaN with one class only."""
  labels = np.asarray(labels, dtype=float).ravel()
  scores = np.asarray(scores, dtype=float).ravel()
  pos = labels.sum()
  neg = len(labels) - pos
  if pos == 0 or neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores))
  # Average ranks over runs of tied scores.
  boundaries = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1, len(scores)]
  for start, end in zip(boundaries[:-1], boundaries[1:]):
    ranks[order[start:end]] = 0.5 * (start + end - 1) + 1
  return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
  labels = np.asarray(labels, dtype=float).ravel()
  p = np.clip(np.asarray(probs, dtype=float).ravel(), eps, 1 - eps)
  if len(labels) == 0:
    return float("nan")
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
  """Impression-weighted mean of per-group AUC over groups with both classes."""
  labels = np.asarray(labels).ravel()
  scores = np.asarray(scores).ravel()
  groups = np.asarray(groups).ravel()
  total, weight = 0.0, 0
  _, inverse = np.unique(groups, return_inverse=True)
  order = np.argsort(inverse, kind="mergesort")
  bounds = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1, len(order)]
  for start, end in zip(bounds[:-1], bounds[1:]):
    idx = order[start:end]
    value = auc(labels[idx], scores[idx])
    if not np.isnan(value):
      total += value * len(idx)
      weight += len(idx)
  return total / weight if weight else float("nan")


def breakdown(labels: np.ndarray, probs: np.ndarray, values: np.ndarray
              ) -> Dict[str, Dict[str, float]]:
  """{value: {"auc", "logloss", "rows", "ctr"}} for each distinct value."""
  out = {}
  labels = np.asarray(labels, dtype=float).ravel()
  probs = np.asarray(probs, dtype=float).ravel()
  values = np.asarray(values).ravel()
  for v in np.unique(values):
    mask = values == v
    key = v.decode() if isinstance(v, bytes) else str(v)
    out[key] = {"auc": auc(labels[mask], probs[mask]),
                "logloss": logloss(labels[mask], probs[mask]),
                "rows": int(mask.sum()),
                "ctr": float(np.mean(labels[mask]))}
  return out


def _as_str(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def group_sizes(groups: Sequence) -> Dict[str, int]:
  """{group: rows} of a column, e.g. the `leaf` column of the training split."""
  values, counts = np.unique(np.asarray(groups).ravel(), return_counts=True)
  return {_as_str(v): int(c) for v, c in zip(values, counts)}


OVER_LEAVES = "leaves"
OVER_ROWS = "rows"


def leaf_size_deciles(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                      train_sizes: Mapping, buckets: int = 10,
                      over: str = OVER_LEAVES) -> List[Dict[str, float]]:
  """Metrics per bucket of evaluation rows, bucketed by their group's training size.

  Hierarchical sharing should pay most on rare leaves, so rows are grouped by how many
  training rows their leaf had (`train_sizes`: {leaf: train rows}; a leaf missing from
  it has size 0). Buckets are quantiles, by default over the leaves present in the
  evaluation rows (`over="leaves"`: each decile holds about a tenth of those leaves, the
  rarest first), or over the evaluation rows (`over="rows"`: a tenth of the rows each,
  steadier AUCs but the whole long tail may fall into the first decile). Leaves of equal
  size always share a bucket, so buckets never overlap in size and a tie or one heavy
  leaf can merge deciles: only non-empty buckets are returned, each with its index (the
  quantile its mid-point falls in) and its train-size range `size_min..size_max`.

  Returns [{"bucket", "size_min", "size_max", "leaves", "rows", "ctr", "auc",
  "logloss"}], ordered from the rarest leaves to the most frequent.
  """
  if over not in (OVER_LEAVES, OVER_ROWS):
    raise ValueError(f"leaf_size_deciles: over must be {OVER_LEAVES!r} or "
                     f"{OVER_ROWS!r}, got {over!r}")
  if buckets < 1:
    raise ValueError(f"leaf_size_deciles: buckets must be >= 1, got {buckets}")
  labels = np.asarray(labels, dtype=float).ravel()
  probs = np.asarray(probs, dtype=float).ravel()
  groups = np.asarray(groups).ravel()
  if not len(labels) == len(probs) == len(groups):
    raise ValueError(f"leaf_size_deciles: labels, probs and groups differ in length "
                     f"({len(labels)}, {len(probs)}, {len(groups)})")
  if len(labels) == 0:
    return []
  sizes = {_as_str(k): int(v) for k, v in train_sizes.items()}
  names, inverse = np.unique(groups, return_inverse=True)
  group_size = np.array([sizes.get(_as_str(n), 0) for n in names])
  group_rows = np.bincount(inverse, minlength=len(names))
  weight = group_rows if over == OVER_ROWS else np.ones(len(names))
  # Quantile of each distinct size, from the mid-point of its weight: ties stay together.
  distinct, size_index = np.unique(group_size, return_inverse=True)
  size_weight = np.bincount(size_index, weights=weight, minlength=len(distinct))
  mid = np.cumsum(size_weight) - size_weight / 2
  size_bucket = np.minimum((mid / size_weight.sum() * buckets).astype(int), buckets - 1)
  group_bucket = size_bucket[size_index]
  row_bucket = group_bucket[inverse]
  out = []
  for b in np.unique(group_bucket):
    mask = row_bucket == b
    in_bucket = group_bucket == b
    out.append({"bucket": int(b),
                "size_min": int(group_size[in_bucket].min()),
                "size_max": int(group_size[in_bucket].max()),
                "leaves": int(in_bucket.sum()),
                "rows": int(mask.sum()),
                "ctr": float(labels[mask].mean()),
                "auc": auc(labels[mask], probs[mask]),
                "logloss": logloss(labels[mask], probs[mask])})
  return out


def normalized_mutual_information(a: Sequence, b: Sequence) -> float:
  """NMI(a; b) = I(a; b) / sqrt(H(a) H(b)); 0 when either is constant."""
  _, a = np.unique(np.asarray(a), return_inverse=True)
  _, b = np.unique(np.asarray(b), return_inverse=True)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1)
  joint /= joint.sum()
  pa, pb = joint.sum(1), joint.sum(0)
  nz = joint > 0
  mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
  ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
  hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
  if not (ha > 0 and hb > 0):
    return 0.0
  # Independent columns give I = 0 up to float round-off (-1e-17): held to [0, 1].
  return float(min(max(mi / np.sqrt(ha * hb), 0.0), 1.0))


def code_usage(codes: np.ndarray, codebook_size: int) -> Dict[str, float]:
  """Perplexity and share of unused codes of one level's code column."""
  codes = np.asarray(codes).ravel()
  bad = codes[(codes < 0) | (codes >= codebook_size)]
  if len(bad):  # else bincount grows past the codebook and dead_share is wrong
    raise ValueError(f"code_usage: code {int(bad[0])} is outside the codebook "
                     f"[0, {codebook_size})")
  counts = np.bincount(codes, minlength=codebook_size)
  p = counts / max(counts.sum(), 1)
  entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
  return {"perplexity": float(np.exp(entropy)),
          "dead_share": float(np.mean(counts == 0))}
