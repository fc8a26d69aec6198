"""Tests of the offline metrics against brute-force or closed-form references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.pipeline import data, evaluate, metrics


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


@pytest.mark.parametrize("n,m", [(3, 6), (5, 5), (5, 11), (7, 4)])
def test_nmi_of_exactly_independent_labelings_is_never_negative(n, m):
  """A full product of two labelings has I = 0; its round-off (-1.4e-16 for 5 x 5)
  printed as "-0.00" in the evaluation table."""
  value = metrics.normalized_mutual_information(np.repeat(np.arange(n), m),
                                                np.tile(np.arange(m), n))
  assert 0.0 <= value < 1e-12 and f"{value:.2f}" == "0.00"


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


# --- leaf-size deciles ----------------------------------------------------------------
def _long_tail_eval(seed=10, leaves=200, rows=20_000):
  """Eval rows over Zipf-sized leaves; train sizes proportional, a few leaves unseen."""
  rng = _rng(seed)
  share = 1.0 / np.arange(1, leaves + 1) ** 1.2
  share /= share.sum()
  names = np.array([f"leaf{i}" for i in range(leaves)])
  groups = names[rng.choice(leaves, rows, p=share)]
  train = {n: int(round(s * 4 * rows)) for n, s in zip(names, share)}
  for n in names[-5:]:
    del train[n]  # never in train: size 0
  labels = rng.integers(0, 2, rows).astype(float)
  probs = np.clip(0.5 + 0.2 * (labels - 0.5) + 0.2 * rng.normal(size=rows), 0.01, 0.99)
  return labels, probs, groups, train


def test_group_sizes_counts_rows_per_group_with_str_keys():
  assert metrics.group_sizes(np.array([b"a", b"b", b"a"])) == {"a": 2, "b": 1}


@pytest.mark.parametrize("over", ["leaves", "rows"])
def test_leaf_size_deciles_partition_rows_by_disjoint_size_ranges(over):
  labels, probs, groups, train = _long_tail_eval()
  out = metrics.leaf_size_deciles(labels, probs, groups, train, over=over)
  assert sum(b["rows"] for b in out) == len(labels)
  assert sum(b["leaves"] for b in out) == len(np.unique(groups))
  assert [b["bucket"] for b in out] == sorted({b["bucket"] for b in out})
  for prev, nxt in zip(out, out[1:]):
    assert prev["size_max"] < nxt["size_min"]  # rarest first, no overlap
  assert out[0]["size_min"] == 0  # leaves missing from train are size 0
  size = np.array([train.get(g, 0) for g in groups])
  for b in out:
    mask = (size >= b["size_min"]) & (size <= b["size_max"])
    assert b["rows"] == mask.sum()
    assert b["ctr"] == pytest.approx(labels[mask].mean())
    assert b["auc"] == pytest.approx(_pair_auc(labels[mask], probs[mask]))
    assert b["logloss"] == pytest.approx(metrics.logloss(labels[mask], probs[mask]))


def test_leaf_size_deciles_over_leaves_vs_over_rows():
  """Over leaves each decile holds about a tenth of the leaves; over rows a tenth of the
  rows, so the head leaves, alone, fill the top deciles."""
  labels, probs, groups, train = _long_tail_eval()
  leaves = len(np.unique(groups))
  by_leaf = metrics.leaf_size_deciles(labels, probs, groups, train, over="leaves")
  by_row = metrics.leaf_size_deciles(labels, probs, groups, train, over="rows")
  assert len(by_leaf) >= 8
  assert max(b["leaves"] for b in by_leaf) <= 0.2 * leaves
  assert by_leaf[-1]["rows"] > 0.5 * len(labels)  # the head decile holds most rows
  assert max(b["rows"] for b in by_row[:-1]) < 0.25 * len(labels)
  assert by_row[-1]["leaves"] <= 2
  assert by_row[0]["leaves"] > 0.5 * leaves  # the whole tail in the first row decile


def test_leaf_size_deciles_ties_stay_in_one_bucket():
  groups = np.array(["a", "b", "c", "d"] * 25)
  train = {"a": 5, "b": 5, "c": 5, "d": 900}
  labels = np.tile([1.0, 0.0, 0.0, 1.0], 25)
  labels[:4] = [0.0, 1.0, 1.0, 0.0]
  probs = np.linspace(0.1, 0.9, 100)
  out = metrics.leaf_size_deciles(labels, probs, groups, train, buckets=10)
  assert [(b["size_min"], b["size_max"], b["leaves"], b["rows"]) for b in out] == [
      (5, 5, 3, 75), (900, 900, 1, 25)]
  assert out[0]["bucket"] < out[1]["bucket"] <= 9


def test_leaf_size_deciles_accepts_bytes_groups_and_str_sizes():
  groups = np.array([b"x", b"y", b"x", b"y"])
  out = metrics.leaf_size_deciles([1, 0, 0, 1], [0.9, 0.2, 0.1, 0.8], groups,
                                  {"x": 3, b"y": 7}, buckets=2)
  assert [(b["size_min"], b["rows"], b["auc"]) for b in out] == [(3, 2, 1.0), (7, 2, 1.0)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(over="users"), "over must be 'leaves' or 'rows', got 'users'"),
    (dict(buckets=0), "buckets must be >= 1, got 0"),
])
def test_leaf_size_deciles_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    metrics.leaf_size_deciles([1, 0], [0.5, 0.5], ["a", "b"], {}, **kwargs)


def test_leaf_size_deciles_rejects_columns_of_different_lengths():
  with pytest.raises(ValueError, match=r"differ in length \(2, 2, 3\)"):
    metrics.leaf_size_deciles([1, 0], [0.5, 0.5], ["a", "b", "c"], {})


def test_a_long_per_value_table_shows_the_largest_and_worst_and_sums_up_the_rest():
  from hmdn.pipeline import evaluate
  values = {f"v{i:02d}": {"rows": 100 - i, "ctr": 0.1, "auc": 0.5 + i / 100,
                          "logloss": 0.3} for i in range(20)}
  for i in range(20, 40):  # one class only: AUC undefined
    values[f"v{i:02d}"] = {"rows": 2, "ctr": 0.0, "auc": float("nan"), "logloss": 0.1}
  few = {"a": {"rows": 5, "ctr": 0.2, "auc": 0.6, "logloss": 0.4}}
  text = evaluate.format_table({"per_distribution": {"item": values, "scenario": few},
                                "rows_eval": 1000, "ctr_eval": 0.1, "auc": 0.7,
                                "logloss": 0.3})
  lines = text.splitlines()
  assert len(lines) == 1 + 1 + 5 + 5 + 1 + 1 + 1  # header, item, scenario, overall
  assert lines[1].startswith("item: 40 values; the 5 with most rows, the 5 with the "
                             "lowest AUC")
  shown = [l.split()[1] for l in lines[2:12]]
  assert shown == ["v00", "v01", "v02", "v03", "v04", "v05", "v06", "v07", "v08", "v09"]
  rest_rows = sum(100 - i for i in range(10, 20)) + 20 * 2
  assert lines[12].split()[:4] == ["item", "30", "others", str(rest_rows)]
  assert lines[12].endswith("(20 with one class only: AUC undefined)")
  assert lines[13].split()[:2] == ["scenario", "a"]
  assert sum("nan" in l for l in lines) == 0


def test_evaluation_reads_a_user_id_passthrough_once(tmp_path, monkeypatch):
  """A user_id kept as a categorical passthrough (GAUC by user without a user
  embedding) is both a breakdown column and the GAUC key: one column, one per row."""
  spec = spec_lib.spec_from_dict({"name": "u", "features": [
      {"name": "click", "kind": "numeric", "role": "label"},
      {"name": "user", "kind": "categorical", "role": "passthrough", "user_id": True},
      {"name": "x", "kind": "categorical"}]})
  rows = [(1.0, b"u1"), (0.0, b"u1"), (1.0, b"u2"), (0.0, b"u2"), (0.0, b"u3")]
  path = str(tmp_path / "eval.tfrecord.gz")
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for click, user in rows:
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "click": tf.train.Feature(float_list=tf.train.FloatList(value=[click])),
          "user": tf.train.Feature(bytes_list=tf.train.BytesList(value=[user])),
          "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a"]))})
      ).SerializeToString())
  monkeypatch.setattr(data, "files_of", lambda data_dir, split: [path])
  scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5], np.float32)
  columns = evaluate.collect(
      lambda serialized: {"probability": tf.constant(scores[:len(serialized)])},
      str(tmp_path), spec)
  assert list(columns["user"]) == [u for _, u in rows]
  np.testing.assert_array_equal(columns["probability"], scores)
  # u1 ranks its rows right, u2 wrong, u3 has one class: (2 * 1 + 2 * 0) / 4
  assert metrics.gauc(columns["click"], columns["probability"],
                      columns["user"]) == pytest.approx(0.5)


def test_a_gauc_without_any_user_of_both_classes_says_why():
  result = {"per_distribution": {}, "rows_eval": 4, "ctr_eval": 0.5, "auc": 0.7,
            "logloss": 0.3, "gauc": metrics.gauc([1, 1, 0, 0], [0.9, 0.2, 0.3, 0.4],
                                                 ["u1", "u1", "u2", "u2"])}
  assert evaluate.format_table(result).splitlines()[-1] == (
      "gauc none (no user has both classes in the eval rows)")
  result["gauc"] = 0.61234
  assert evaluate.format_table(result).splitlines()[-1] == "gauc 0.6123"
