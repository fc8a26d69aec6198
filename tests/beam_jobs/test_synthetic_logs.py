"""Tests of the synthetic log generator: determinism, layout and the planted hierarchy."""
import csv
import glob
import json
import os

import numpy as np
import pytest

from hmdn.beam_jobs import synthetic_logs
from hmdn.features import spec as spec_lib
from hmdn.pipeline import metrics

ROWS = 20_000
SEED = 3


def _generate(path, rows=ROWS, seed=SEED, rows_per_file=7_000):
  return synthetic_logs.generate(str(path), synthetic_logs.GeneratorConfig(
      rows=rows, seed=seed, rows_per_file=rows_per_file))


def _files(path):
  return sorted(glob.glob(os.path.join(str(path), "raw", "*.csv")))


def _read(path):
  """(headers per file, rows as dicts over all files in order)."""
  headers, rows = [], []
  for name in _files(path):
    with open(name) as f:
      reader = csv.reader(f)
      header = next(reader)
      headers.append(header)
      rows.extend(dict(zip(header, r)) for r in reader)
  return headers, rows


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """One 20k-row run split into 7k-row files, read back as columns."""
  out = tmp_path_factory.mktemp("gen_sharded")
  summary = _generate(out)
  headers, rows = _read(out)
  cols = {k: np.array([r[k] for r in rows]) for k in headers[0]}
  for k in ("click", "true_ctr", "price", "hour"):
    cols[k] = cols[k].astype(float)
  cols["h"] = np.array([s.rsplit("_h", 1)[1] for s in cols["subgroup"]])
  return {"dir": out, "summary": summary, "headers": headers, "rows": rows, "cols": cols}


def _bytes(path):
  return [open(p, "rb").read() for p in _files(path)]


def test_deterministic_by_seed(sharded, tmp_path):
  _generate(tmp_path / "again")
  _generate(tmp_path / "other", seed=SEED + 1)
  assert _bytes(tmp_path / "again") == _bytes(sharded["dir"])
  with open(tmp_path / "again" / "generator.json") as f:
    assert json.load(f) == sharded["summary"]
  assert _bytes(tmp_path / "other") != _bytes(sharded["dir"])


def test_rows_per_file_only_shards_the_rows(sharded, tmp_path):
  """The same (rows, seed) in one file gives the same rows in the same order."""
  summary = _generate(tmp_path / "one", rows_per_file=10**6)
  assert summary["files"] == 1
  assert summary["oracle_auc"] == sharded["summary"]["oracle_auc"]
  assert _read(tmp_path / "one")[1] == sharded["rows"]


def test_files_rows_and_header(sharded):
  spec = spec_lib.load_spec(synthetic_logs.SPEC_PATH)
  assert [os.path.basename(p) for p in _files(sharded["dir"])] == [
      "part-00000.csv", "part-00001.csv", "part-00002.csv"]
  assert sharded["headers"] == [spec.names] * 3
  sizes = [sum(1 for _ in open(p)) - 1 for p in _files(sharded["dir"])]
  assert sizes == [7_000, 7_000, 6_000]
  summary = sharded["summary"]
  assert summary["rows"] == len(sharded["rows"]) == ROWS
  assert summary["files"] == 3
  assert summary["clicks"] == sharded["cols"]["click"].sum()
  assert not glob.glob(os.path.join(str(sharded["dir"]), "raw", "*.tmp"))
  with open(os.path.join(str(sharded["dir"]), "generator.json")) as f:
    assert json.load(f) == summary


def test_rows_parse_with_the_written_spec(sharded):
  """Every generated cell is valid for the spec shipped next to it."""
  spec = spec_lib.load_spec(os.path.join(str(sharded["dir"]), "spec.yaml"))
  assert spec.features == spec_lib.load_spec("synthetic").features
  for row in sharded["rows"][:2_000]:
    for f in spec.features:
      spec.parse_value(f, row[f.name])


def test_rerun_with_fewer_files_leaves_no_stale_file(tmp_path):
  _generate(tmp_path, rows=3_000, rows_per_file=1_000)
  assert len(_files(tmp_path)) == 3
  _generate(tmp_path, rows=3_000, rows_per_file=2_000)
  assert len(_files(tmp_path)) == 2
  assert len(_read(tmp_path)[1]) == 3_000


@pytest.mark.parametrize("config,match", [
    (dict(rows=0), "--rows=0: expected an integer >= 1"),
    (dict(rows=10, rows_per_file=0), "--rows_per_file=0: expected an integer >= 1"),
    (dict(rows=10, seed=-1), "--seed=-1: expected an integer >= 0"),
    (dict(rows=2.5), "--rows=2.5: expected an integer >= 1"),
])
def test_bad_config_is_a_clear_error(tmp_path, config, match):
  with pytest.raises(ValueError, match=match):
    synthetic_logs.generate(str(tmp_path), synthetic_logs.GeneratorConfig(**config))


# --- The planted structure ------------------------------------------------------------
def test_oracle_auc_matches_exact_auc_of_true_ctr(sharded):
  cols = sharded["cols"]
  exact = metrics.auc(cols["click"], cols["true_ctr"])
  assert sharded["summary"]["oracle_auc"] == pytest.approx(exact, abs=1e-3)
  assert 0.6 < exact < 0.95  # informative, yet clicks stay noisy


def test_leaf_ctrs_differ_and_observed_tracks_true(sharded):
  cols = sharded["cols"]
  leaves = sharded["summary"]["leaves"]
  assert set(leaves) == set(cols["subgroup"])
  true, observed, rows = [], [], []
  for leaf, entry in leaves.items():
    mask = cols["subgroup"] == leaf
    assert entry["rows"] == mask.sum()
    assert entry["true_ctr"] == pytest.approx(cols["true_ctr"][mask].mean(), abs=1e-5)
    assert entry["observed_ctr"] == pytest.approx(cols["click"][mask].mean())
    true.append(entry["true_ctr"])
    observed.append(entry["observed_ctr"])
    rows.append(entry["rows"])
  true, observed, rows = map(np.array, (true, observed, rows))
  # Leaves are really different populations: a wide spread of click rates.
  assert true.max() / true.min() > 3
  assert true.max() - true.min() > 0.2
  # Observed CTR follows the planted one, within binomial noise on the big leaves.
  big = rows >= 300
  assert big.sum() >= 10
  sigma = np.sqrt(true * (1 - true) / rows)
  assert np.all(np.abs(observed - true)[big] < 5 * sigma[big])
  assert np.corrcoef(true[big], observed[big])[0, 1] > 0.95


def _majority_accuracy(target, column):
  """Accuracy of predicting target by its most common value for each column value."""
  correct = 0
  for v in np.unique(column):
    _, counts = np.unique(target[column == v], return_counts=True)
    correct += counts.max()
  return correct / len(target)


def test_hidden_subgroup_shows_through_device_and_hour(sharded):
  cols = sharded["cols"]
  h = cols["h"]
  ios = cols["device"] == "ios"
  assert ios[h == "0"].mean() > 0.6 and ios[h == "1"].mean() < 0.3
  morning = (cols["hour"] >= 5) & (cols["hour"] < 13)
  assert morning[h == "0"].mean() > 0.6 and morning[h == "1"].mean() < 0.2
  assert metrics.normalized_mutual_information(h, cols["device"]) > 0.1


def test_no_single_feature_column_determines_the_subgroup(sharded):
  """Correlated, not determined: the visible levels hold both subgroups.

  Hour is the strongest single clue (centres 9h and 20h, spread 3h: about 95% of rows
  guessable), yet still leaves rows ambiguous; the user id, a per-user property, is
  the exception checked separately below.
  """
  cols = sharded["cols"]
  h = cols["h"]
  hour_bucket = np.floor(cols["hour"]).astype(int)
  base = _majority_accuracy(h, np.zeros(len(h)))  # guessing the commoner subgroup
  for name, column, ceiling in [
      ("scenario", cols["scenario"], base + 0.1),
      ("user_group", cols["user_group"], base + 0.1),
      ("item_category", cols["item_category"], base + 0.1),
      ("item_tags", cols["item_tags"], base + 0.1), ("device", cols["device"], 0.8),
      ("hour", hour_bucket, 0.98)]:
    assert _majority_accuracy(h, column) < ceiling, name
  # Both subgroups are present in every visible (scenario, user_group) cell.
  cells = np.char.add(np.char.add(cols["scenario"], "_"), cols["user_group"])
  for cell in np.unique(cells):
    assert set(h[cells == cell]) == {"0", "1"}, cell
  # Device and hour together say more than either alone.
  both = np.char.add(cols["device"], hour_bucket.astype(str))
  assert _majority_accuracy(h, both) > max(_majority_accuracy(h, cols["device"]),
                                           _majority_accuracy(h, hour_bucket))


def test_subgroup_is_a_property_of_the_user(sharded):
  """A user always sits in one leaf path (group, subgroup); the scenario varies."""
  cols = sharded["cols"]
  path = np.char.add(cols["user_group"], cols["h"])
  for user in np.unique(cols["user_id"])[:300]:
    assert len(set(path[cols["user_id"] == user])) == 1, user
  assert _majority_accuracy(cols["scenario"], cols["user_id"]) < 0.9


# --- The conversion task (opt-in) -----------------------------------------------------
RATE = 0.03


@pytest.fixture(scope="module")
def converting(tmp_path_factory):
  """The same 20k rows with a conversion task at 3% of clicks."""
  out = tmp_path_factory.mktemp("gen_conv")
  summary = synthetic_logs.generate(str(out), synthetic_logs.GeneratorConfig(
      rows=ROWS, seed=SEED, conversion_rate=RATE))
  headers, rows = _read(out)
  cols = {k: np.array([r[k] for r in rows]) for k in headers[0]}
  for k in ("click", "true_ctr", "purchase", "true_cvr"):
    cols[k] = cols[k].astype(float)
  return {"dir": out, "summary": summary, "headers": headers, "rows": rows, "cols": cols}


def test_the_default_has_no_conversion_task(sharded):
  summary = sharded["summary"]
  assert not {"purchases", "cvr", "oracle_auc_purchase_cvr", "config"} & set(summary)
  spec = spec_lib.load_spec(os.path.join(str(sharded["dir"]), "spec.yaml"))
  assert [f.name for f in spec.labels] == ["click"]
  assert list(spec.oracles) == ["click"]


def test_clicks_do_not_depend_on_the_conversion_task(sharded, converting):
  """Turning conversions on adds two columns; every other column is as it was."""
  assert converting["headers"][0] == ["click", "true_ctr", "purchase", "true_cvr"] + \
      sharded["headers"][0][2:]
  added = ("purchase", "true_cvr")
  assert [{k: v for k, v in r.items() if k not in added} for r in converting["rows"]] == \
      sharded["rows"]


def test_conversion_spec_has_the_purchase_task_and_its_oracle(converting):
  spec = spec_lib.load_spec(os.path.join(str(converting["dir"]), "spec.yaml"))
  assert [(f.name, f.after) for f in spec.labels] == [("click", None),
                                                      ("purchase", "click")]
  assert {t: f.name for t, f in spec.oracles.items()} == {"click": "true_ctr",
                                                          "purchase": "true_cvr"}
  assert spec.oracle.name == "true_ctr"
  for row in converting["rows"][:1_000]:
    spec_lib.check_tasks(spec, {f.name: spec.parse_value(f, row[f.name])
                                for f in spec.features})


def test_purchases_only_after_clicks_at_the_stated_share(converting):
  cols, summary = converting["cols"], converting["summary"]
  assert set(cols["purchase"]) <= {0.0, 1.0}
  assert np.all(cols["click"][cols["purchase"] == 1] == 1)
  clicks = cols["click"].sum()
  share = cols["purchase"].sum() / clicks
  assert 0.02 <= share <= 0.05
  assert summary["purchases"] == cols["purchase"].sum()
  assert summary["cvr"] == pytest.approx(share)
  assert summary["ctcvr"] == pytest.approx(cols["purchase"].mean())
  # The intercept is calibrated: the expected share over clicks is the rate.
  clicked = cols["click"] == 1
  assert cols["true_cvr"][clicked].mean() == pytest.approx(RATE, rel=0.15)


def test_conversion_oracle_aucs_match_the_rows(converting):
  cols, summary = converting["cols"], converting["summary"]
  clicked = cols["click"] == 1
  cvr = metrics.auc(cols["purchase"][clicked], cols["true_cvr"][clicked])
  ctcvr = metrics.auc(cols["purchase"], cols["true_ctr"] * cols["true_cvr"])
  for key, exact in (("oracle_auc_purchase_cvr", cvr), ("oracle_auc_purchase_ctcvr", ctcvr)):
    assert np.isfinite(summary[key]) and summary[key] > 0.5, key
    assert summary[key] == pytest.approx(exact, abs=2e-3), key
  assert ctcvr > summary["oracle_auc"]  # a rare event that needs the click too


def test_true_cvr_varies_by_leaf(converting):
  """The conversion model is per leaf: most of true_cvr's variance is between leaves."""
  cols, leaves = converting["cols"], converting["summary"]["leaves"]
  logit = np.log(cols["true_cvr"] / (1 - cols["true_cvr"]))
  means = {leaf: logit[cols["subgroup"] == leaf].mean() for leaf in leaves}
  between = np.array([means[s] for s in cols["subgroup"]])
  assert between.var() / logit.var() > 0.3
  true_cvr = np.array([e["true_cvr"] for e in leaves.values()])
  assert true_cvr.max() / true_cvr.min() > 3


@pytest.mark.parametrize("rho", [0.9, -0.9])
def test_conversion_effects_follow_the_click_effects_by_the_correlation(rho):
  world = synthetic_logs._World(ROWS, SEED, RATE, rho)
  # Each leaf's coefficients around the root's: the deviations correlate with rho's sign.
  click = (world.coef - world.coef.mean((0, 1, 2)))[..., 4:].ravel()
  cvr = (world.cvr_coef - world.cvr_coef.mean((0, 1, 2)))[..., 4:].ravel()
  corr = np.corrcoef(click, cvr)[0, 1]
  assert np.sign(corr) == np.sign(rho) and abs(corr) > 0.6


@pytest.mark.parametrize("config,match", [
    (dict(conversion_rate=1.0), r"--conversion_rate=1.0: expected a finite number in "
     r"\[0, 1\)"),
    (dict(conversion_rate=-0.1), "--conversion_rate=-0.1"),
    (dict(conversion_rate=0.03, conversion_correlation=1.5), "--conversion_correlation=1.5"),
])
def test_bad_conversion_config_is_a_clear_error(tmp_path, config, match):
  with pytest.raises(ValueError, match=match):
    synthetic_logs.generate(str(tmp_path), synthetic_logs.GeneratorConfig(rows=10, **config))
