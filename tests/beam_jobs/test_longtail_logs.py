"""Tests of the long-tail generator: determinism, the tree, the Zipf tail, the signal."""
import csv
import glob
import json
import os

import numpy as np
import pytest

from hmdn.beam_jobs import generators, longtail_logs, synthetic_logs
from hmdn.features import spec as spec_lib
from hmdn.pipeline import metrics

ROWS = 30_000
SEED = 5


def _config(**kw):
  kw.setdefault("rows", ROWS)
  kw.setdefault("seed", SEED)
  return longtail_logs.LongTailConfig(**kw)


def _files(path):
  return sorted(glob.glob(os.path.join(str(path), "raw", "*.csv")))


def _read(path):
  headers, rows = [], []
  for name in _files(path):
    with open(name) as f:
      reader = csv.reader(f)
      headers.append(next(reader))
      rows.extend(reader)
  return headers, rows


@pytest.fixture(scope="module")
def log(tmp_path_factory):
  """One 30k-row run in 11k-row files, read back as columns."""
  out = tmp_path_factory.mktemp("longtail")
  summary = longtail_logs.generate(str(out), _config(rows_per_file=11_000))
  headers, rows = _read(out)
  cols = {k: np.array(v) for k, v in zip(headers[0], zip(*rows))}
  for k in ("click", "true_ctr", "price", "hour"):
    cols[k] = cols[k].astype(float)
  return {"dir": out, "summary": summary, "headers": headers, "rows": rows, "cols": cols}


def _bytes(path):
  return [open(p, "rb").read() for p in _files(path)]


# --- Contract -------------------------------------------------------------------------
def test_deterministic_by_seed(log, tmp_path):
  longtail_logs.generate(str(tmp_path / "again"), _config(rows_per_file=11_000))
  longtail_logs.generate(str(tmp_path / "other"), _config(rows_per_file=11_000,
                                                          seed=SEED + 1))
  assert _bytes(tmp_path / "again") == _bytes(log["dir"])
  with open(tmp_path / "again" / "generator.json") as f:
    assert json.load(f) == log["summary"]
  assert _bytes(tmp_path / "other") != _bytes(log["dir"])


@pytest.mark.parametrize("chunk_rows,rows_per_file", [(1_000, 10**6), (7_777, 4_000)])
def test_rows_do_not_depend_on_chunking_or_sharding(log, tmp_path, chunk_rows,
                                                    rows_per_file):
  summary = longtail_logs.generate(str(tmp_path), _config(
      chunk_rows=chunk_rows, rows_per_file=rows_per_file))
  assert _read(tmp_path)[1] == log["rows"]
  assert summary["files"] == -(-ROWS // rows_per_file)
  for key in ("oracle_auc", "leaf_agnostic_auc", "clicks", "leaves"):
    assert summary[key] == log["summary"][key], key


def test_spec_loads_and_matches_the_header(log):
  spec = spec_lib.load_spec(longtail_logs.SPEC_PATH)
  assert spec_lib.load_spec("longtail").features == spec.features
  written = spec_lib.load_spec(os.path.join(str(log["dir"]), "spec.yaml"))
  assert written.features == spec.features
  assert log["headers"] == [[f.name for f in spec.raw_fields]] * 3
  assert [f.name for f in spec.distribution_fields] == list(longtail_logs.LEVELS)
  assert [f.distribution_level for f in spec.distribution_fields] == [0, 1, 2, 3]
  for name in (longtail_logs.LEAF_COLUMN, longtail_logs.LATENT_COLUMN):
    assert spec[name].role == spec_lib.PASSTHROUGH
    assert name not in [f.name for f in spec.model_inputs]
  assert spec.label.name == "click" and spec.oracle.name == "true_ctr"
  for row in log["rows"][:2_000]:
    for f, cell in zip(spec.features, row):
      spec.parse_value(f, cell)



def test_summary_matches_the_rows(log):
  cols, summary = log["cols"], log["summary"]
  assert summary["rows"] == len(log["rows"]) == ROWS
  assert summary["clicks"] == cols["click"].sum()
  assert 0.05 < summary["ctr"] < 0.15
  assert summary["oracle_auc"] == pytest.approx(metrics.auc(cols["click"],
                                                            cols["true_ctr"]), abs=1e-3)
  leaves, counts = np.unique(cols["leaf"], return_counts=True)
  assert summary["num_leaves_seen"] == len(leaves)
  assert {k: v["rows"] for k, v in summary["leaves"].items()} == dict(
      zip(leaves.tolist(), counts.tolist()))
  with open(os.path.join(str(log["dir"]), "generator.json")) as f:
    assert json.load(f) == summary


@pytest.mark.parametrize("field,value,match", [
    ("rows", 0, "--rows=0: expected an integer >= 1"),
    ("branching_max", 2, r"--branching_max=2: expected an integer >= --branching_min "
     r"\(3\)"),
    ("ctr", 1.5, r"--ctr=1.5: expected a finite number in \(0, 1\)"),
    ("latent_signal", -0.1, r"--latent_signal=-0.1: expected a finite number in "
     r"\[0, 1\]"),
])
def test_bad_config_is_a_clear_error(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    longtail_logs.generate(str(tmp_path), _config(**{field: value}))


def test_every_config_field_has_help():
  import dataclasses
  for f in dataclasses.fields(longtail_logs.LongTailConfig):
    assert f.metadata.get("help"), f.name


def test_registry_maps_names_to_generators(tmp_path):
  assert generators.get("planted").generate is synthetic_logs.generate
  lt = generators.get("longtail")
  assert lt.config_class is longtail_logs.LongTailConfig
  assert lt.spec_path == longtail_logs.SPEC_PATH
  summary = lt.generate(str(tmp_path), lt.config(rows=500, seed=1))
  assert summary["rows"] == 500 and "oracle_auc" in summary
  with pytest.raises(ValueError, match="unknown generator 'zipf'.*'longtail', 'planted'"):
    generators.get("zipf")
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['leaves'\]"):
    lt.config(leaves=3)


# --- The hierarchy --------------------------------------------------------------------
def test_each_leaf_has_one_parent_chain_with_branching_3_to_8(log):
  cols = log["cols"]
  levels = longtail_logs.LEVELS
  for child, parent in zip(levels[1:], levels[:-1]):
    pairs = set(zip(cols[child], cols[parent]))
    children = [c for c, _ in pairs]
    assert len(children) == len(set(children)), child  # one parent per node
  paths = set(zip(*(cols[name] for name in levels), cols["leaf"]))
  assert len(paths) == len(set(cols["leaf"])) == len(set(cols["segment"]))
  # Branching, on the full tree (a sample may miss rare children).
  world = longtail_logs._World(_config())
  assert len(world.node_bias[0]) in range(3, 9)
  for parent in world.parents[1:]:
    assert set(np.bincount(parent)) <= set(range(3, 9))
  assert 100 <= world.num_leaves <= 4096


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zipf_tail_most_leaves_under_200_rows_at_1m(seed):
  """At the default size (1M rows), from the leaf probabilities: no rows are written."""
  config = longtail_logs.LongTailConfig(seed=seed)
  assert config.rows == 1_000_000
  world = longtail_logs._World(config)
  expected = world.leaf_prob * config.rows
  assert world.num_leaves >= 300
  assert np.mean(expected < 200) > 0.5
  assert np.sort(expected)[-10:].sum() > 0.3 * config.rows  # and a heavy head
  assert world.leaf_prob.max() < 0.3


def test_children_effects_scatter_around_their_parents():
  """effect(child) = effect(parent) + noise, the noise shrinking with depth."""
  config = _config()
  world = longtail_logs._World(config)
  spreads = []
  for level in range(1, len(longtail_logs.LEVELS)):
    parent = world.parents[level]
    deviation = world.node_bias[level] - world.node_bias[level - 1][parent]
    spreads.append(deviation.std())
    # Siblings are closer to each other than to random nodes of their level.
    bias = world.node_bias[level]
    assert np.abs(deviation).mean() < np.abs(bias - bias.mean()).mean(), level
  assert spreads == sorted(spreads, reverse=True)


def test_oracle_beats_a_leaf_agnostic_score(log):
  """The hierarchy carries real signal: the true CTR ranks clearly better than the
  part of the logit that ignores the leaf and the latent group."""
  world = longtail_logs._World(_config())
  rows = longtail_logs._rows(world, SEED, 0, 3, 12_000)
  oracle = metrics.auc(rows["click"], rows["true_ctr"])
  agnostic = metrics.auc(rows["click"], rows["agnostic"])
  assert oracle > agnostic + 0.08
  summary = log["summary"]
  assert summary["oracle_auc"] > summary["leaf_agnostic_auc"] + 0.08
  # Leaves differ beyond their bias: within one leaf, the leaf's preference for the item
  # still ranks clicks.
  assert summary["oracle_auc"] < 0.95


def test_leaf_ctrs_spread_widely(log):
  big = [v["true_ctr"] for v in log["summary"]["leaves"].values() if v["rows"] >= 100]
  assert len(big) >= 10
  assert max(big) / min(big) > 4


def test_latent_level_is_only_weakly_visible(log):
  cols = log["cols"]
  latent = cols[longtail_logs.LATENT_COLUMN]
  # It matters for clicks...
  ctr = {z: cols["true_ctr"][latent == z].mean() for z in np.unique(latent)}
  assert max(ctr.values()) / min(ctr.values()) > 1.5
  # ...but no single observed feature recovers it. (user_id excluded: the latent group
  # is a user property, like a real population, so a user's id pins it down.)
  observed = {name: cols[name] for name in (*longtail_logs.LEVELS, "device",
                                             "item_category", "item_id")}
  observed["hour"] = np.floor(cols["hour"]).astype(int)
  observed["price"] = np.digitize(cols["price"], np.quantile(cols["price"],
                                                             np.linspace(0, 1, 21)))
  nmi = {k: metrics.normalized_mutual_information(latent, v) for k, v in observed.items()}
  assert max(nmi.values()) < 0.3, nmi
  # Still, device and hour do carry it, weakly.
  assert nmi["device"] > 0.01 and nmi["hour"] > 0.01, nmi
  assert set(latent) == {f"z{k}" for k in range(_config().latent_groups)}


# --- Opt-in: the conversion task and the browsing ---------------------------------------
RATE = 0.03


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
  """The 30k rows with conversions at 3% of clicks and browsing at 0.7."""
  out = tmp_path_factory.mktemp("longtail_rich")
  summary = longtail_logs.generate(str(out), _config(conversion_rate=RATE, browsing=0.7))
  headers, rows = _read(out)
  cols = {k: np.array(v) for k, v in zip(headers[0], zip(*rows))}
  for k in ("click", "true_ctr", "purchase", "true_cvr", "ts"):
    cols[k] = cols[k].astype(float)
  return {"dir": out, "summary": summary, "headers": headers, "rows": rows, "cols": cols}


def test_the_default_log_has_neither_addition(log):
  summary = log["summary"]
  assert not [k for k in summary if k.startswith(("browsing", "oracle_auc_purchase"))]
  assert "purchases" not in summary
  assert not set(longtail_logs.OPT_IN["conversion_rate"] + longtail_logs.OPT_IN[
      "browsing"]) & set(summary["config"])
  assert "ts" not in log["headers"][0] and "purchase" not in log["headers"][0]


def test_conversions_alone_leave_every_other_column_as_it_was(log, tmp_path):
  longtail_logs.generate(str(tmp_path), _config(rows_per_file=11_000,
                                                conversion_rate=RATE))
  headers, rows = _read(tmp_path)
  keep = [i for i, name in enumerate(headers[0]) if name not in ("purchase", "true_cvr")]
  assert [headers[0][i] for i in keep] == log["headers"][0]
  assert [[r[i] for i in keep] for r in rows] == log["rows"]


def test_the_rich_spec_has_the_purchase_task_its_oracle_and_ts(rich):
  spec = spec_lib.load_spec(os.path.join(str(rich["dir"]), "spec.yaml"))
  assert rich["headers"][0] == [f.name for f in spec.raw_fields]
  assert [(f.name, f.after) for f in spec.labels] == [("click", None),
                                                      ("purchase", "click")]
  assert {t: f.name for t, f in spec.oracles.items()} == {"click": "true_ctr",
                                                          "purchase": "true_cvr"}
  assert spec["ts"].role == spec_lib.PASSTHROUGH and spec["ts"].kind == spec_lib.NUMERIC
  for field in ("user_id", "item_id", "item_category"):
    assert spec[field].is_model_input
  for row in rich["rows"][:1_000]:
    values = {f.name: spec.parse_value(f, cell) for f, cell in zip(spec.raw_fields, row)}
    spec_lib.check_tasks(spec, values)


def test_purchases_follow_clicks_at_the_stated_share(rich):
  cols, summary = rich["cols"], rich["summary"]
  assert np.all(cols["click"][cols["purchase"] == 1] == 1)
  share = cols["purchase"].sum() / cols["click"].sum()
  assert 0.02 <= share <= 0.05, share
  assert summary["cvr"] == pytest.approx(share)
  clicked = cols["click"] == 1
  assert cols["true_cvr"][clicked].mean() == pytest.approx(RATE, rel=0.2)
  cvr = metrics.auc(cols["purchase"][clicked], cols["true_cvr"][clicked])
  ctcvr = metrics.auc(cols["purchase"], cols["true_ctr"] * cols["true_cvr"])
  assert summary["oracle_auc_purchase_cvr"] == pytest.approx(cvr, abs=2e-3)
  assert summary["oracle_auc_purchase_ctcvr"] == pytest.approx(ctcvr, abs=2e-3)
  for key in ("oracle_auc", "oracle_auc_purchase_cvr", "oracle_auc_purchase_ctcvr"):
    assert np.isfinite(summary[key]) and summary[key] > 0.5, key


def test_true_cvr_carries_the_leaf(rich):
  """Leaf-level conversion effects: on the big leaves the conversion logit's share of
  variance between leaves is like the click's, and the leaves that click more convert
  more (conversion_correlation 0.5)."""
  cols = rich["cols"]
  _, inverse, counts = np.unique(cols["leaf"], return_inverse=True, return_counts=True)
  big = counts[inverse] >= 200

  def between(p):
    logit = np.log(p / (1 - p))
    means = np.bincount(inverse, weights=logit) / counts
    return means[inverse][big].var() / logit[big].var(), means

  ctr_share, ctr_means = between(cols["true_ctr"])
  cvr_share, cvr_means = between(cols["true_cvr"])
  assert cvr_share > 0.08 and cvr_share > 0.5 * ctr_share, (cvr_share, ctr_share)
  seen = counts >= 50
  assert np.corrcoef(ctr_means[seen], cvr_means[seen])[0, 1] > 0.3


@pytest.mark.parametrize("rho", [0.9, -0.9])
def test_conversion_effects_nest_and_follow_the_click_effects(rho):
  world = longtail_logs._World(_config(conversion_rate=RATE, conversion_correlation=rho))
  for level in range(1, len(longtail_logs.LEVELS)):
    parent = world.parents[level]
    cvr_dev = world.cvr_bias[level] - world.cvr_bias[level - 1][parent]
    click_dev = world.node_bias[level] - world.node_bias[level - 1][parent]
    corr = np.corrcoef(cvr_dev, click_dev)[0, 1]
    assert np.sign(corr) == np.sign(rho) and abs(corr) > 0.6, level
    # Around the parent's: a child deviates less than the level spreads.
    bias = world.cvr_bias[level]
    assert np.abs(cvr_dev).mean() < np.abs(bias - bias.mean()).mean(), level


def test_ts_increases_per_user(rich):
  cols = rich["cols"]
  assert np.all(cols["ts"] == np.arange(ROWS))  # the row's position in the log
  for user in np.unique(cols["user_id"])[:300]:
    assert np.all(np.diff(cols["ts"][cols["user_id"] == user]) > 0), user


def _category_by_latent(cols):
  latent = cols[longtail_logs.LATENT_COLUMN]
  cats = np.unique(cols["item_category"])
  return np.array([[np.mean(cols["item_category"][latent == z] == c) for c in cats]
                   for z in np.unique(latent)])


def test_browsing_depends_on_the_latent_segment(log, rich):
  """Per latent group, the viewed categories differ (total variation between groups),
  with browsing and not without; a user's most viewed category carries the group."""
  def spread(cols):
    dist = _category_by_latent(cols)
    return max(0.5 * np.abs(a - b).sum() for a in dist for b in dist)
  with_browsing, without = spread(rich["cols"]), spread(log["cols"])
  assert with_browsing > 0.4 and without < 0.15, (with_browsing, without)
  summary = rich["summary"]
  assert summary["browsing_nmi_user_top_category"] > 0.25
  assert summary["browsing_nmi_user_top_category"] > 1.5 * summary[
      "browsing_nmi_row_category"]
  # The figure is the NMI it says, recomputed from the rows.
  cols = rich["cols"]
  users, inverse, counts = np.unique(cols["user_id"], return_inverse=True,
                                     return_counts=True)
  top, latent = [], []
  for u in np.flatnonzero(counts >= longtail_logs.MIN_USER_ROWS):
    mine = inverse == u
    cats, n = np.unique(cols["item_category"][mine], return_counts=True)
    ids = np.array([int(c[1:]) for c in cats])
    top.append(ids[n == n.max()].min())
    latent.append(cols[longtail_logs.LATENT_COLUMN][mine][0])
  assert summary["browsing_users"] == len(top)
  assert summary["browsing_nmi_user_top_category"] == pytest.approx(
      metrics.normalized_mutual_information(np.array(latent), np.array(top)), abs=1e-6)


def test_clicks_follow_the_segments_interest_in_the_category(rich):
  world = longtail_logs._World(_config(conversion_rate=RATE, browsing=0.7))
  cols = rich["cols"]
  latent = np.array([int(z[1:]) for z in cols[longtail_logs.LATENT_COLUMN]])
  category = np.array([int(c[1:]) for c in cols["item_category"]])
  interest = world.interest[latent, category]
  liked, disliked = interest > 0.5, interest < -0.5
  assert liked.sum() > 1_000 and disliked.sum() > 100
  assert cols["true_ctr"][liked].mean() > 1.5 * cols["true_ctr"][disliked].mean()


@pytest.mark.parametrize("field,value,match", [
    ("conversion_rate", 1.0, r"--conversion_rate=1.0"),
    ("conversion_correlation", -2.0, r"--conversion_correlation=-2.0"),
    ("browsing", 1.5, r"--browsing=1.5: expected a finite number in \[0, 1\]"),
    ("interest_concentration", 0.0, r"--interest_concentration=0.0"),
])
def test_bad_opt_in_config_is_a_clear_error(tmp_path, field, value, match):
  with pytest.raises(ValueError, match=match):
    longtail_logs.generate(str(tmp_path), _config(rows=10, **{field: value}))
