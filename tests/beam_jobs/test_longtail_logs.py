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
