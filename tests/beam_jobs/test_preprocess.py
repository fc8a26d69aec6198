"""Tests of the Beam preprocessing job on small hand-made logs with bad rows.

Beam pipelines cost seconds each, so three runs are shared by module fixtures and the
tests look at in-memory snapshots of their outputs: a two-file CSV log (one process),
the same log rerun into the same directory with two worker processes, and a JSONL log.
"""
import collections
import glob
import json
import os
import re


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from apache_beam.options import pipeline_options as beam_options  # noqa: E402

from hmdn.beam_jobs import preprocess  # noqa: E402
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError  # noqa: E402
from hmdn.features import spec as spec_lib  # noqa: E402
from hmdn.features.ownership import ForeignDirectoryError  # noqa: E402
from hmdn.features.preprocessed import IncompleteDataError, PreprocessedData  # noqa: E402
from hmdn.pipeline import data  # noqa: E402
from split_reader import parsed_rows, serialized_records  # noqa: E402  (one split reader)

SPEC = {"name": "test_log", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "conv", "kind": "numeric", "role": "passthrough", "default": 0},
    {"name": "rid", "kind": "categorical", "role": "passthrough"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "user_id", "kind": "categorical", "user_id": True, "vocab_min_count": 2},
    {"name": "item_id", "kind": "categorical", "vocab_min_count": 3},
    {"name": "device", "kind": "categorical", "default": "unknown"},
    {"name": "tags", "kind": "multi_categorical"},
    {"name": "price", "kind": "numeric"},
    {"name": "ts", "kind": "numeric"},  # a unix time: a large offset, a small spread
    {"name": "hour", "kind": "numeric", "boundaries": [6, 12, 18]},
]}
NAMES = [f["name"] for f in SPEC["features"]]
N_GOOD = 3_000
EVAL_FRACTION = 0.2

# (row cells by column, the fragments its dead-letter reason must contain).
_OK = dict(click="1", conv="0", rid="bad", scenario="s0", user_id="u1", item_id="i1",
           device="ios", tags="t1", price="2.5", ts="1700000000", hour="3")
BAD_ROWS = [
    (dict(_OK, rid="bad_price", price="abc"), ["'price'", "'abc'", "not a number"]),
    (dict(_OK, rid="bad_nan", price="nan"), ["'price'", "'nan'", "finite"]),
    (dict(_OK, rid="bad_empty_label", click=""), ["'click'", "empty value"]),
    (dict(_OK, rid="bad_label_2", click="2"), ["'click'", "'2'", "not 0 or 1"]),
    (dict(_OK, rid="bad_no_scenario", scenario=""), ["'scenario'", "empty value"]),
]
SHORT_ROW = "1,0,bad_short,s0"  # four cells where the header has eleven
SHORT_REASON = ["expected 11 columns", "got 4"]


def _good_rows(n, seed=0):
  """Raw string cells of n valid impressions, each with a unique row id."""
  rng = np.random.default_rng(seed)
  item_p = 1.0 / np.arange(1, 401)
  rows = []
  for i in range(n):
    scenario = rng.choice(["s0", "s1", "s2"], p=[0.5, 0.3, 0.2])
    tags = sorted(set(rng.choice([f"t{k}" for k in range(10)], rng.integers(1, 4))))
    rows.append({
        "click": str(int(rng.random() < {"s0": 0.1, "s1": 0.3, "s2": 0.5}[scenario])),
        "conv": str(int(rng.random() < 0.05)),
        "rid": f"r{i}",
        "scenario": scenario,
        "user_id": f"u{rng.integers(0, 800)}",
        "item_id": f"i{rng.choice(400, p=item_p / item_p.sum())}",
        "device": rng.choice(["ios", "android", ""], p=[0.5, 0.4, 0.1]),
        "tags": "|".join(tags),
        "price": repr(round(float(rng.lognormal(3.0, 0.5)), 4)),
        "ts": repr(1.7e9 + round(float(rng.normal(0, 50)), 3)),
        "hour": repr(round(float(rng.uniform(0, 24)), 3)),
    })
  return rows


def _write_csv(path, header, rows, extra_lines=()):
  lines = [",".join(header)]
  lines += [",".join(r.get(h, "x") for h in header) for r in rows]
  lines[len(lines) // 2:len(lines) // 2] = list(extra_lines)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _split_dir(out, split):
  return os.path.dirname(PreprocessedData(out).split_prefix(split))


def _read_examples(out, split):
  """Serialized examples of a split, canonicalized (tf.Example maps have no order)."""
  return [tf.train.Example.FromString(s).SerializeToString(deterministic=True)
          for s in serialized_records(out, split)]


def _records(serialized, spec):
  """Parsed examples keyed by row id."""
  return {r["rid"]: r for r in parsed_rows(serialized, spec)}


def _snapshot(out, spec):
  """Everything a test needs from an output directory, read before it changes."""
  examples = {s: _read_examples(out, s) for s in ("train", "eval")}
  layout = PreprocessedData(out)
  dead = []
  for path in sorted(glob.glob(f"{layout.dead_letter_prefix}-*.jsonl")):
    with open(path) as f:
      dead.extend(json.loads(line) for line in f if line.strip())
  vocab = {}
  suffix = PreprocessedData.TEXT_SUFFIX
  for path in glob.glob(os.path.join(layout.vocab_dir, f"*{suffix}")):
    with open(path) as f:
      vocab[os.path.basename(path)[:-len(suffix)]] = f.read().splitlines()
  return {
      "out": out,
      "files": sorted(os.path.relpath(p, out) for p in glob.glob(f"{out}/**/*",
                                                                 recursive=True)
                      if os.path.isfile(p)),
      "examples": examples,
      "records": {s: _records(examples[s], spec) for s in examples},
      "dead": dead,
      "vocab": vocab,
      "metadata": layout.metadata,
      "stats": layout.stats,
  }


@pytest.fixture(scope="module")
def log(tmp_path_factory):
  """Two CSV files (different column orders, one without the optional `conv`)."""
  root = tmp_path_factory.mktemp("csv_log")
  spec_path = str(root / "test_log.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(SPEC, f)
  good = _good_rows(N_GOOD)
  first, second = good[:1_800], good[1_800:]
  bad_lines = [",".join(r[h] for h in NAMES) for r, _ in BAD_ROWS]
  _write_csv(root / "a.csv", NAMES, first, extra_lines=bad_lines + [SHORT_ROW, ""])
  header_b = ["extra"] + [h for h in reversed(NAMES) if h != "conv"]
  _write_csv(root / "b.csv", header_b, second)
  return {"root": root, "spec_path": spec_path, "spec": spec_lib.load_spec(spec_path),
          "good": {r["rid"]: r for r in good}, "first": first, "second": second,
          "a": str(root / "a.csv")}


def _config(log, out, **kwargs):
  defaults = dict(raw=f"{log['root']}/a.csv,{log['root']}/b.csv", output_dir=str(out),
                  spec_path=log["spec_path"], split_key="user_id",
                  eval_fraction=EVAL_FRACTION, direct_num_workers=1)
  defaults.update(kwargs)
  return PreprocessConfig(**defaults)


@pytest.fixture(scope="module")
def single(log, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("out"))
  with pytest.raises(IncompleteDataError, match="not a complete"):
    PreprocessedData(out).metadata  # nothing there before the job
  returned = preprocess.run(_config(log, out))
  snap = _snapshot(out, log["spec"])
  snap["returned"] = returned
  return snap


@pytest.fixture(scope="module")
def multi(log, single):
  """The same job rerun into the same directory, on two worker processes."""
  out = single["out"]
  layout = PreprocessedData(out)
  stale = [f"{layout.split_prefix('train')}-00007-of-00009{layout.SHARD_SUFFIX}",
           layout.vocab_path("gone"), f"{layout.dead_letter_prefix}-00003-of-00004.jsonl"]
  for path in stale:
    with open(path, "w") as f:
      f.write("stale")
  returned = preprocess.run(_config(log, out, direct_num_workers=2, overwrite=True))
  snap = _snapshot(out, log["spec"])
  snap["returned"] = returned
  snap["stale"] = stale
  return snap


# --- Counts and the dead letter -------------------------------------------------------
def test_counters_reconcile(single):
  meta = single["metadata"]
  assert meta == single["returned"]
  written = meta["rows_written"]
  assert meta["rows_read"] == N_GOOD + len(BAD_ROWS) + 1  # the blank line is skipped
  assert meta["rows_rejected"] == len(BAD_ROWS) + 1
  assert written["train"] + written["eval"] == N_GOOD
  assert meta["rows_read"] == written["train"] + written["eval"] + meta["rows_rejected"]
  assert len(single["examples"]["train"]) == written["train"]
  assert len(single["examples"]["eval"]) == written["eval"]
  # tf.data, as the trainer reads them, sees the same counts.
  assert data.count_records(single["out"], "train") == written["train"]
  assert data.count_records(single["out"], "eval") == written["eval"]
  assert meta["input_format"] == "csv" and meta["split_key"] == "user_id"


def test_every_bad_row_is_in_the_dead_letter_with_its_reason(log, single):
  dead = {d["row"]: d for d in single["dead"]}
  assert len(single["dead"]) == len(BAD_ROWS) + 1
  expected = [(",".join(r[h] for h in NAMES), frags) for r, frags in BAD_ROWS]
  expected.append((SHORT_ROW, SHORT_REASON))
  for row, fragments in expected:
    assert row in dead, row
    assert dead[row]["source"].endswith("a.csv")
    for fragment in fragments:
      assert fragment in dead[row]["reason"], (row, dead[row]["reason"])


def test_good_rows_all_reach_the_tfrecords_with_their_values(log, single):
  train, evals = single["records"]["train"], single["records"]["eval"]
  assert not set(train) & set(evals)
  assert set(train) | set(evals) == set(log["good"])
  second = {r["rid"] for r in log["second"]}
  for rid, rec in {**train, **evals}.items():
    raw = log["good"][rid]
    for name in ("scenario", "user_id", "item_id"):
      assert rec[name] == raw[name]
    assert rec["device"] == (raw["device"] or "unknown")
    assert rec["tags"] == raw["tags"].split("|")
    assert rec["click"] == float(raw["click"])
    # b.csv has no `conv` column: the spec's default fills it.
    assert rec["conv"] == (0.0 if rid in second else float(raw["conv"]))
    for name in ("price", "ts", "hour"):
      assert rec[name] == np.float32(float(raw[name]))


# --- Split ----------------------------------------------------------------------------
def test_split_is_by_key_and_near_eval_fraction(log, single):
  users = {s: {r["user_id"] for r in single["records"][s].values()}
           for s in ("train", "eval")}
  assert not users["train"] & users["eval"]  # one user, one split
  user_share = len(users["eval"]) / (len(users["train"]) + len(users["eval"]))
  assert user_share == pytest.approx(EVAL_FRACTION, abs=0.05)
  written = single["metadata"]["rows_written"]
  assert written["eval"] / N_GOOD == pytest.approx(EVAL_FRACTION, abs=0.05)


# --- Vocabularies ---------------------------------------------------------------------
def _train_counts(log, single, field):
  counts = collections.Counter()
  for rid in single["records"]["train"]:
    raw = log["good"][rid]
    if field == "tags":
      counts.update(raw["tags"].split("|"))
    elif field == "device":
      counts[raw["device"] or "unknown"] += 1
    else:
      counts[raw[field]] += 1
  return counts


def test_vocabularies_respect_min_count_and_frequency_order(log, single):
  spec = log["spec"]
  assert sorted(single["vocab"]) == sorted(f.name for f in spec.vocabulary_fields)
  for f in spec.vocabulary_fields:
    counts = _train_counts(log, single, f.name)
    vocab = single["vocab"][f.name]
    assert len(vocab) == len(set(vocab)), f.name
    assert set(vocab) == {v for v, c in counts.items() if c >= f.vocab_min_count}, \
        f.name
    freqs = [counts[v] for v in vocab]
    assert freqs == sorted(freqs, reverse=True), f.name  # most frequent first
    assert single["metadata"]["vocab_sizes"][f.name] == len(vocab)
    assert single["stats"]["distinct_train"][f.name] == len(counts)


def test_rare_and_eval_only_values_are_out_of_vocabulary(log, single):
  """They go to the OOV bucket: present in the data, absent from the vocabulary."""
  for field in ("user_id", "item_id"):
    min_count = log["spec"][field].vocab_min_count
    counts = _train_counts(log, single, field)
    rare = {v for v, c in counts.items() if c < min_count}
    assert rare, field  # the log was built to have some
    assert not rare & set(single["vocab"][field])
  eval_users = {r["user_id"] for r in single["records"]["eval"].values()}
  assert eval_users and not eval_users & set(single["vocab"]["user_id"])
  assert "unknown" in single["vocab"]["device"]  # the default is a real value


# --- Statistics -----------------------------------------------------------------------
def test_distribution_statistics_match_an_independent_count(log, single):
  dist = single["stats"]["distribution"]
  for split in ("train", "eval"):
    rows = [log["good"][rid] for rid in single["records"][split]]
    expected = collections.defaultdict(lambda: [0, 0])
    for r in rows:
      expected[r["scenario"]][0] += 1
      expected[r["scenario"]][1] += int(r["click"])
    assert set(dist[split]["scenario"]) == set(expected)
    for value, (n, clicks) in expected.items():
      cell = dist[split]["scenario"][value]
      assert (cell["rows"], cell["clicks"]) == (n, clicks)
      assert cell["ctr"] == pytest.approx(clicks / n)
    total = dist[split]["__all__"]["__all__"]
    assert total["rows"] == len(rows)
    assert total["clicks"] == sum(int(r["click"]) for r in rows)


def test_numeric_moments_match_numpy(log, single):
  """On the training split; `ts` checks the variance survives a large offset."""
  numeric = single["stats"]["numeric"]
  assert sorted(numeric) == ["hour", "price", "ts"]  # model inputs only
  train = [log["good"][rid] for rid in single["records"]["train"]]
  for name in ("price", "ts", "hour"):
    x = np.array([float(r[name]) for r in train])
    assert numeric[name]["count"] == len(x)
    assert numeric[name]["mean"] == pytest.approx(x.mean(), rel=1e-9)
    assert numeric[name]["std"] == pytest.approx(x.std(), rel=1e-6), name


def test_missing_counts(log, single):
  missing = single["stats"]["missing"]
  assert missing["device"] == sum(r["device"] == "" for r in log["good"].values())
  assert missing["conv"] == len(log["second"])  # the column is absent from b.csv
  assert missing["scenario"] == 1 and missing["click"] == 1  # the two bad rows


# --- Rerun with two workers -----------------------------------------------------------
def test_two_workers_write_the_same_examples(single, multi):
  for split in ("train", "eval"):
    assert sorted(multi["examples"][split]) == sorted(single["examples"][split]), split
  assert multi["metadata"]["rows_written"] == single["metadata"]["rows_written"]
  assert multi["metadata"]["rows_rejected"] == single["metadata"]["rows_rejected"]
  assert multi["vocab"] == single["vocab"]
  assert multi["stats"]["distribution"] == single["stats"]["distribution"]
  for name, moments in single["stats"]["numeric"].items():
    for key in ("count", "mean", "std"):
      assert multi["stats"]["numeric"][name][key] == pytest.approx(moments[key],
                                                                   rel=1e-9)
  assert sorted(d["row"] for d in multi["dead"]) == sorted(
      d["row"] for d in single["dead"])


def test_rerun_leaves_no_stale_outputs(single, multi):
  out = multi["out"]
  layout = PreprocessedData(out)
  for path in multi["stale"]:
    assert not os.path.exists(path), path
  # Only this run's shards: the single run's `-of-00001` files were replaced.
  for split in ("train", "eval"):
    split_dir = os.path.relpath(_split_dir(out, split), out)
    shards = [f for f in multi["files"] if f.startswith(f"{split_dir}/")]
    assert shards and all(f.endswith((f"-of-00002{layout.SHARD_SUFFIX}",
                                      f"-of-00001{layout.SHARD_SUFFIX}")) for f in shards)
    n = int(shards[0].split("-of-")[1][:5])
    assert len(shards) == n, shards
  assert not glob.glob(f"{layout.scratch_dir}/*")
  assert layout.METADATA_FILE in multi["files"] and layout.STATS_FILE in multi["files"]


# --- JSONL input ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def jsonl(log, tmp_path_factory):
  root = tmp_path_factory.mktemp("jsonl_log")
  lines = []
  for i in range(40):
    obj = {"click": i % 2, "rid": f"j{i}", "scenario": f"s{i % 3}",
           "user_id": f"u{i % 7}", "item_id": i % 5, "tags": ["a", "b"][:1 + i % 2],
           "price": 1.0 + i, "ts": 1.7e9 + i, "hour": float(i % 24)}
    if i % 4 == 0:
      obj["device"] = "pc"
    lines.append(json.dumps(obj))
  bad = ['{"click": 1, "rid": "x", ', "[1, 2, 3]",
         json.dumps({"rid": "no_click", "scenario": "s0", "user_id": "u", "item_id": 1,
                     "tags": "a", "price": 1, "ts": 1, "hour": 1})]
  lines[10:10] = bad
  path = root / "log.jsonl"
  path.write_text("\n".join(lines) + "\n")
  out = str(root / "out")
  preprocess.run(PreprocessConfig(
      raw=str(path), output_dir=out, spec_path=log["spec_path"], eval_fraction=0.5,
      direct_num_workers=1))
  snap = _snapshot(out, log["spec"])
  snap["bad"] = bad
  return snap


def test_jsonl_input(jsonl):
  meta = jsonl["metadata"]
  assert meta["input_format"] == "jsonl"
  assert meta["rows_read"] == 43 and meta["rows_rejected"] == 3
  records = {**jsonl["records"]["train"], **jsonl["records"]["eval"]}
  assert len(records) == 40
  assert 0 < len(jsonl["records"]["eval"]) < 40
  r = records["j5"]
  assert r["item_id"] == "0"  # a JSON number used as an id
  assert r["tags"] == ["a", "b"] and r["device"] == "unknown" and r["conv"] == 0.0
  assert r["price"] == 6.0 and r["click"] == 1.0
  assert records["j4"]["device"] == "pc"
  reasons = {d["row"]: d["reason"] for d in jsonl["dead"]}
  assert "not valid JSON" in reasons[jsonl["bad"][0]]
  assert "expected a JSON object, got list" in reasons[jsonl["bad"][1]]
  assert "'click'" in reasons[jsonl["bad"][2]]


def test_failed_rerun_leaves_no_metadata(jsonl, monkeypatch):
  """The metadata marks completion: a run that dies midway must not leave the old one."""
  def fail(self):
    raise RuntimeError("pipeline died")
  monkeypatch.setattr(preprocess.beam.Pipeline, "run", fail)
  out = jsonl["out"]
  config = PreprocessConfig(raw=jsonl["metadata"]["raw"][0], output_dir=out,
                            spec_path=PreprocessedData(out).spec_path,
                            direct_num_workers=1, overwrite=True)
  with pytest.raises(RuntimeError, match="pipeline died"):
    preprocess.run(config)
  with pytest.raises(IncompleteDataError, match=f"{out}: not a complete"):
    PreprocessedData(out).metadata
  with pytest.raises(IncompleteDataError, match="not a complete"):
    PreprocessedData(out).stats
  assert not glob.glob(f"{_split_dir(out, 'train')}/*")


# --- Job-level errors (no pipeline runs) ----------------------------------------------
def test_complete_output_is_replaced_only_with_overwrite(log, single):
  with pytest.raises(PreprocessError, match=re.escape(
      f"--data_dir={single['out']} holds a complete output of an earlier `hmdn "
      "preprocess`; pass --overwrite")):
    preprocess.run(_config(log, single["out"]))
  assert PreprocessedData(single["out"]).is_complete()


def test_a_folder_of_the_users_is_refused_untouched(log, tmp_path):
  """Issue 22.1: names the job writes (train/, stats.json, spec.yaml) in a folder the
  job did not write are the user's: nothing is deleted or overwritten."""
  out = tmp_path / "mine"
  (out / "train").mkdir(parents=True)
  (out / "train" / "notes.txt").write_text("mine")
  (out / "stats.json").write_text("mine")
  (out / "spec.yaml").write_text("mine")
  for overwrite in (False, True):
    with pytest.raises(ForeignDirectoryError, match=re.escape(
        f"--data_dir={out} is not empty and was not written by hmdn")):
      preprocess.run(_config(log, out, overwrite=overwrite))
  assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
      "spec.yaml", "stats.json", "train", "train/notes.txt"]
  assert {p.read_text() for p in out.rglob("*") if p.is_file()} == {"mine"}


def test_missing_column_names_file_and_column(log, tmp_path):
  path = tmp_path / "no_price.csv"
  header = [h for h in NAMES if h != "price"]
  _write_csv(path, header, list(log["good"].values())[:3])
  with pytest.raises(PreprocessError,
                     match=rf"{path}: column\(s\) \['price'\].* not in the header"):
    preprocess.run(_config(log, tmp_path / "out", raw=str(path)))
  assert not os.path.exists(PreprocessedData(str(tmp_path / "out")).metadata_path)


def test_an_optional_column_no_file_has_is_refused_with_a_close_name(log, tmp_path):
  """A default fills empty cells (and the files that predate a column, as b.csv lacks
  `conv`), but a column absent from every header would give every row the default: a
  misspelt header is refused, naming the column and the header name close to it."""
  path = tmp_path / "typo.csv"
  header = ["Conv" if h == "conv" else h for h in NAMES]
  _write_csv(path, header, list(log["good"].values())[:3])
  with pytest.raises(PreprocessError, match=re.escape(
      "column(s) ['conv'] of spec") + r".*close: 'conv' \(is it 'Conv'\?\).*"
      "a default fills empty cells"):
    preprocess.run(_config(log, tmp_path / "out", raw=str(path)))
  assert not os.path.exists(PreprocessedData(str(tmp_path / "out")).metadata_path)


def test_no_matching_file_is_a_clear_error(log, tmp_path):
  pattern = str(tmp_path / "nothing" / "*.csv")
  with pytest.raises(PreprocessError,
                     match=re.escape(f"--raw: no file matches '{pattern}'")):
    preprocess.run(_config(log, tmp_path / "out", raw=pattern))


@pytest.mark.parametrize("kwargs,match", [
    (dict(split_key="user"), "--split_key 'user' is not a field"),
    (dict(eval_fraction=1.0), r"--eval_fraction=1.0: expected a finite number in "
     r"\(0, 1\)"),
    (dict(eval_fraction=0.0), r"--eval_fraction=0.0: expected a finite number in "
     r"\(0, 1\)"),
    (dict(eval_fraction=float("nan")), r"--eval_fraction=nan: expected a finite number"),
    (dict(direct_num_workers=0), r"--direct_num_workers=0: expected an integer >= 1"),
    (dict(split_time_field="ts", split_time_quantile=1.0),
     r"--split_time_quantile=1.0: expected a finite number in \(0, 1\)"),
    (dict(split_time_field="ts", split_time_quantile=0.0),
     r"--split_time_quantile=0.0: expected a finite number in \(0, 1\)"),
    (dict(delimiter=";;"), "--delimiter=';;': expected one character"),
    (dict(source="parquet"), "--source='parquet': expected one of"),
    (dict(input_format="parquet"), "--input_format.*'parquet'"),
])
def test_bad_flags_are_clear_errors(log, tmp_path, kwargs, match):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("not the job's")
  with pytest.raises(PreprocessError, match=match):
    preprocess.run(_config(log, out, **kwargs))
  assert sorted(os.listdir(out)) == ["keep.txt"]  # refused before anything is touched


def test_load_metadata_on_empty_dir(tmp_path):
  with pytest.raises(IncompleteDataError, match=f"{tmp_path}: not a complete"):
    PreprocessedData(str(tmp_path)).metadata


def test_moments_merge_matches_numpy():
  """Workers' partial moments merge exactly, even around a large offset."""
  from hmdn.beam_jobs.transforms.statistics import _MomentsFn
  fn = _MomentsFn()
  x = 1.7e9 + np.random.default_rng(1).normal(0, 3, 1_000)
  accs = [fn.create_accumulator()]  # an empty worker merges as a no-op
  for chunk in np.array_split(x, 3):
    acc = fn.create_accumulator()
    for v in chunk:
      acc = fn.add_input(acc, float(v))
    accs.append(acc)
  out = fn.extract_output(fn.merge_accumulators(accs))
  assert out["count"] == len(x)
  assert out["mean"] == pytest.approx(x.mean(), rel=1e-12)
  assert out["std"] == pytest.approx(x.std(), rel=1e-6)
  assert fn.extract_output(fn.create_accumulator()) == {"count": 0, "mean": 0.0,
                                                        "std": 1.0}


def test_a_job_without_runner_runs_on_the_direct_engine_not_prism(log, single, tmp_path,
                                                                  monkeypatch):
  """Beam's DirectRunner first tries the Prism runner (a download): a job given no
  --runner must run on the engine these tests check, wherever the network allows."""
  from apache_beam.runners.portability import prism_runner
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  tried, used = [], []
  monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline",
                      lambda self, *a, **k: tried.append(1))
  original = fn_runner.FnApiRunner.run_pipeline

  def recorded(self, pipeline, options):
    used.append(options.view_as(beam_options.DirectOptions).direct_num_workers)
    return original(self, pipeline, options)
  monkeypatch.setattr(fn_runner.FnApiRunner, "run_pipeline", recorded)
  returned = preprocess.run(_config(log, tmp_path / "out", direct_num_workers=2))
  assert not tried and used == [2]
  assert returned["rows_read"] == single["returned"]["rows_read"]
  assert returned["rows_written"] == single["returned"]["rows_written"]
