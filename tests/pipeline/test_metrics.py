"""Tests of the offline metrics against brute-force or closed-form references."""
import math

import numpy as np
import pytest

from pipeline import metrics


def _pair_auc(labels, scores):
  """AUC by counting every (positive, negative) pair, ties worth one half."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=float)
  pos = scores[labels == 1]
  neg = scores[labels == 0]
  if len(pos) == 0 or len(neg) == 0:
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _rng(seed=0):
  return np.random.default_rng(seed)


# --- auc ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pair_counting_with_ties(seed):
  """Coarse integer scores make many ties: the rank formula must count them as halves."""
  rng = _rng(seed)
  labels = rng.integers(0, 2, 400)
  scores = rng.integers(0, 7, 400) + 0.5 * labels * rng.integers(0, 2, 400)
  assert metrics.auc(labels, scores) == pytest.approx(_pair_auc(labels, scores),
                                                      abs=1e-12)


def test_auc_continuous_scores_and_extremes():
  rng = _rng(3)
  labels = rng.integers(0, 2, 300)
  scores = rng.normal(size=300) + labels
  assert metrics.auc(labels, scores) == pytest.approx(_pair_auc(labels, scores))
  # Perfect, reversed and constant scorers.
  assert metrics.auc(labels, labels.astype(float)) == 1.0
  assert metrics.auc(labels, -labels.astype(float)) == 0.0
  assert metrics.auc(labels, np.zeros(300)) == 0.5


def test_auc_is_nan_with_one_class():
  assert math.isnan(metrics.auc(np.ones(5), np.arange(5.0)))
  assert math.isnan(metrics.auc(np.zeros(5), np.arange(5.0)))


# --- logloss --------------------------------------------------------------------------
def test_logloss_matches_formula():
  rng = _rng(4)
  labels = rng.integers(0, 2, 200).astype(float)
  probs = rng.uniform(0.01, 0.99, 200)
  expected = -sum(y * math.log(p) + (1 - y) * math.log(1 - p)
                  for y, p in zip(labels, probs)) / len(labels)
  assert metrics.logloss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_logloss_clips_certain_mistakes():
  """A wrong prediction at exactly 0 or 1 costs -log(eps), not infinity."""
  value = metrics.logloss([1.0, 0.0], [0.0, 1.0], eps=1e-7)
  assert value == pytest.approx(-math.log(1e-7), rel=1e-6)


# --- gauc -----------------------------------------------------------------------------
def test_gauc_is_weighted_mean_of_group_aucs_skipping_one_class_groups():
  rng = _rng(5)
  n = 600
  groups = rng.choice(["a", "b", "c", "d", "e"], n)
  labels = rng.integers(0, 2, n)
  labels[groups == "d"] = 1  # one-class groups carry no ranking signal
  labels[groups == "e"] = 0
  scores = rng.normal(size=n) + 0.8 * labels + (groups == "a")
  total, weight = 0.0, 0
  for g in ["a", "b", "c"]:
    mask = groups == g
    total += _pair_auc(labels[mask], scores[mask]) * mask.sum()
    weight += mask.sum()
  assert metrics.gauc(labels, scores, groups) == pytest.approx(total / weight)
  # The group offset on "a" is invisible to GAUC but not to the global AUC.
  assert metrics.auc(labels, scores) != pytest.approx(total / weight)


def test_gauc_is_nan_when_no_group_has_both_classes():
  assert math.isnan(metrics.gauc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2]))


# --- breakdown ------------------------------------------------------------------------
def test_breakdown_keys_and_rows():
  rng = _rng(6)
  values = np.array([b"s0", b"s1", b"s2"])[rng.integers(0, 3, 300)]
  labels = rng.integers(0, 2, 300).astype(float)
  probs = rng.uniform(0.05, 0.95, 300)
  out = metrics.breakdown(labels, probs, values)
  assert sorted(out) == ["s0", "s1", "s2"]  # bytes decoded to str keys
  for key, row in out.items():
    mask = values == key.encode()
    assert row["rows"] == mask.sum()
    assert row["ctr"] == pytest.approx(labels[mask].mean())
    assert row["auc"] == pytest.approx(_pair_auc(labels[mask], probs[mask]))
    assert row["logloss"] == pytest.approx(metrics.logloss(labels[mask], probs[mask]))
  assert sum(r["rows"] for r in out.values()) == 300


def test_breakdown_accepts_plain_lists():
  out = metrics.breakdown([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6], ["x", "x", "y", "y"])
  assert out["x"]["auc"] == 1.0 and out["y"]["auc"] == 0.0


# --- NMI ------------------------------------------------------------------------------
def test_nmi_is_one_for_identical_labelings_up_to_renaming():
  rng = _rng(7)
  a = rng.integers(0, 5, 1000)
  renamed = np.array(["v", "w", "x", "y", "z"])[(a + 2) % 5]
  assert metrics.normalized_mutual_information(a, a) == pytest.approx(1.0)
  assert metrics.normalized_mutual_information(a, renamed) == pytest.approx(1.0)


def test_nmi_near_zero_for_independent_labelings():
  rng = _rng(8)
  a = rng.integers(0, 4, 200_000)
  b = rng.integers(0, 6, 200_000)
  assert metrics.normalized_mutual_information(a, b) < 1e-3


def test_nmi_symmetric_and_between_zero_and_one():
  rng = _rng(9)
  a = rng.integers(0, 4, 2000)
  b = np.where(rng.random(2000) < 0.6, a, rng.integers(0, 3, 2000))  # partly dependent
  ab = metrics.normalized_mutual_information(a, b)
  assert ab == pytest.approx(metrics.normalized_mutual_information(b, a))
  assert 0.1 < ab < 0.9


def test_nmi_zero_for_constant_labeling():
  assert metrics.normalized_mutual_information([1, 1, 1], [0, 1, 2]) == 0.0


# --- code usage -----------------------------------------------------------------------
def test_code_usage_uniform_codes_have_perplexity_k():
  usage = metrics.code_usage(np.tile(np.arange(8), 50), 8)
  assert usage["perplexity"] == pytest.approx(8.0)
  assert usage["dead_share"] == 0.0


def test_code_usage_constant_code_has_perplexity_one():
  usage = metrics.code_usage(np.full(100, 3), 8)
  assert usage["perplexity"] == pytest.approx(1.0)
  assert usage["dead_share"] == pytest.approx(7 / 8)


def test_code_usage_dead_share_counts_unused_codes():
  usage = metrics.code_usage(np.array([0, 0, 1, 5]), 10)
  assert usage["dead_share"] == pytest.approx(7 / 10)
  p = np.array([2, 1, 1]) / 4
  assert usage["perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_code_usage_rejects_codes_outside_the_codebook():
  with pytest.raises(ValueError, match=r"code 12 .*\[0, 8\)"):
    metrics.code_usage(np.array([1, 12]), 8)
