"""Code health of a quantized probe set (numpy, outside the training step):
how much of x each level leaves, how evenly and how many codes are used, and
how many rows changed code since the previous probe."""
from typing import Dict, Optional

import numpy as np


def _perplexity(codes: np.ndarray, size: int) -> float:
  p = np.bincount(codes, minlength=size) / max(len(codes), 1)
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def code_health(x: np.ndarray, codes: np.ndarray, partial_sums: np.ndarray,
                codebook_size: int,
                previous: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
  """x [B, V, d], codes [B, V, D], partial sums [B, V, D, d] and the codes of
  the previous probe (or None) -> the arrays [V, D] of
  `ResidualQuantizer.diagnostics`."""
  views, levels = codes.shape[1], codes.shape[2]
  norm = np.sqrt((x ** 2).sum((0, 2)))  # [V]
  left = np.sqrt(((x[:, :, None] - partial_sums) ** 2).sum((0, 3)))  # [V, D]
  ratio = left / np.maximum(norm[:, None], 1e-12)
  size = codebook_size
  perplexity = np.array([[_perplexity(codes[:, v, l], size)
                          for l in range(levels)]
                         for v in range(views)])
  dead = np.array([[size - len(np.unique(codes[:, v, l]))
                    for l in range(levels)]
                   for v in range(views)], np.int64)
  if previous is not None and previous.shape == codes.shape:
    flips = (previous != codes).mean(0)
  else:
    flips = np.full(codes.shape[1:], np.nan)
  return {"residual_ratio": ratio, "perplexity": perplexity,
          "dead_codes": dead, "flip_share": flips}
