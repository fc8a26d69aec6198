"""Offline metrics in NumPy: AUC, logloss, GAUC and per-distribution breakdowns.

Computed on the whole evaluation set at once (not streamed per batch like Keras' AUC),
so they are exact and identical whatever the batch size or the strategy.
"""
from typing import Dict, Sequence

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
  return mi / np.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0


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
