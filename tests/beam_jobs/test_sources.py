"""Tests of the real-log sources (Ali-CCP raw, MovieLens, Ali-CCP preprocessed CSV), the
derived distribution features and the TFDS copy.

Beam runs cost seconds, so each source runs once per module (the Ali-CCP raw log a
second time on two worker processes) and the tests read snapshots of the outputs.
"""
import bisect
import collections
import csv
import glob
import json
import os


import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from hmdn.beam_jobs import ali_ccp_format as A  # noqa: E402
from hmdn.beam_jobs import preprocess  # noqa: E402
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError  # noqa: E402
from hmdn.features import spec as spec_lib  # noqa: E402
from hmdn.features.preprocessed import PreprocessedData  # noqa: E402
from hmdn.pipeline import data  # noqa: E402
from split_reader import read_split  # noqa: E402  (the tests' one split reader)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
E1, E2, E3 = "\x01", "\x02", "\x03"


def _snapshot(out, spec):
  layout = PreprocessedData(out)
  dead = []
  for path in sorted(glob.glob(f"{layout.dead_letter_prefix}-*.jsonl")):
    with open(path) as f:
      dead.extend(json.loads(line) for line in f if line.strip())
  tables = {}
  suffix = PreprocessedData.TEXT_SUFFIX
  for path in glob.glob(os.path.join(layout.tables_dir, f"*{suffix}")):
    with open(path) as f:
      tables[os.path.basename(path)[:-len(suffix)]] = dict(
          line.rstrip("\n").split("\t") for line in f if line.strip())
  train, train_ser = read_split(out, spec, "train")
  evals, eval_ser = read_split(out, spec, "eval")
  return {"out": out, "spec": spec, "train": train, "eval": evals, "dead": dead,
          "serialized": {"train": train_ser, "eval": eval_ser}, "tables": tables,
          "metadata": layout.metadata, "stats": layout.stats}


def _reasons(snap):
  return {d["row"]: d["reason"] for d in snap["dead"]}


def _bucket(boundaries, count):
  return str(bisect.bisect_right(boundaries, count))


# --- Ali-CCP raw format -----------------------------------------------------------------
def _good_entries(line):
  """An independent reading of a good feature list: {field: [ids]}."""
  out = collections.defaultdict(list)
  for entry in line.split(E1):
    field, rest = entry.split(E2)
    out[field].append(rest.split(E3)[0])
  return out


ITEM = [("205", "500001", 1.0), ("301", "9000", 1.0)]
# (skeleton line, fragments of its dead-letter reason)
BAD_SKELETON = [
    ("90001\t0\t0\tc00000001\t2\t" + A.feature_list(ITEM), ["expected 6 comma-separated",
                                                           "got 1"]),
    ("90002,0,0,c00000001,2", ["expected 6 comma-separated", "got 5"]),
    ("90003,0,0,c00000001,2,205" + E3 + "1" + E1 + "301" + E2 + "9000" + E3 + "1",
     ["entry 0", "no \\x02"]),
    ("90004,0,0,c00000001,2,205" + E2 + "500001" + E1 + "301" + E2 + "9000" + E3 + "1",
     ["entry 0", "no \\x03"]),
    ("90005,0,0,c00000001,2," + A.feature_list(ITEM[:1]) + E1 + "301" + E2 + "9000" + E3
     + "abc", ["entry 1", "'abc' is not a number"]),
    (A.skeleton_line("90006", 0, 0, "c_missing", ITEM),
     ["common_feature_index 'c_missing' is not in common_features_train.csv"]),
    ("90007,0,0,c00000001,3," + A.feature_list(ITEM), ["feature_count is 3",
                                                       "has 2 entries"]),
    (A.skeleton_line("90008", 2, 0, "c00000001", ITEM), ["'click'", "not 0 or 1"]),
    (A.skeleton_line("90009", 0, 0, "c00000001", ITEM + [("205", "500002", 1.0)]),
     ["field '205' has 2 feature ids", "single-valued"]),
    # purchase is a task observed after a click (the spec's `after: click`)
    (A.skeleton_line("90010", 0, 1, "c00000001", ITEM), ["'purchase'", "label 1 where "
                                                         "'click' is 0"]),
    (A.skeleton_line("90011", 1, 2, "c00000001", ITEM), ["'purchase'", "not 0 or 1"]),
]
BAD_COMMON = [
    ("c_bad_count,1", ["expected 3 comma-separated", "got 2"]),
    ("c_bad_value,1,101" + E2 + "100001" + E3 + "x", ["'x' is not a number"]),
]


@pytest.fixture(scope="module")
def ali_raw(tmp_path_factory):
  root = tmp_path_factory.mktemp("ali_ccp_raw")
  raw = root / "raw"
  counts = A.generate(str(raw), impressions=900, users=80, items=120,
                      parts=("train", "test"), seed=3)
  paths = {k: str(raw / f"{k}_train.csv") for k in ("sample_skeleton", "common_features")}
  with open(paths["sample_skeleton"]) as f:
    good_skeleton = f.read().splitlines()
  with open(paths["common_features"]) as f:
    good_common = f.read().splitlines()
  with open(paths["sample_skeleton"], "a") as f:
    for line, _ in BAD_SKELETON:
      f.write(line + "\n")
    f.write(good_skeleton[4] + "\n")  # a repeated sample id
  with open(paths["common_features"], "a") as f:
    for line, _ in BAD_COMMON:
      f.write(line + "\n")
    f.write(good_common[2] + "\n")  # a repeated common-feature index
    f.write(A.common_line("c_unused", A.user_entries(np.random.default_rng(0), 7, 1))
            + "\n")
  with open(raw / "sample_skeleton_test.csv") as f:
    test_skeleton = f.read().splitlines()
  with open(raw / "common_features_test.csv") as f:
    test_common = f.read().splitlines()
  # The shipped spec, plus the sample id kept so rows can be matched to their lines.
  spec_dict = spec_lib.load_spec("ali_ccp_raw").to_dict()
  spec_dict["features"].insert(2, {"name": "sample_id", "kind": "categorical",
                                   "role": "passthrough"})
  spec_path = str(root / "ali_ccp_raw_with_sample_id.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(spec_dict, f)
  spec = spec_lib.load_spec(spec_path)
  out = str(root / "out")
  config = PreprocessConfig(raw=f"{raw}/*.csv", output_dir=out, spec_path=spec_path,
                            source="ali_ccp_raw", direct_num_workers=1)
  preprocess.run(config)
  snap = _snapshot(out, spec)
  snap.update(config=config, counts=counts, good_skeleton=good_skeleton,
              good_common=good_common, test_skeleton=test_skeleton,
              test_common=test_common, root=root)
  return snap


def test_ali_ccp_counters_reconcile_per_source(ali_raw):
  meta = ali_raw["metadata"]
  n_good = sum(c["impressions"] for c in ali_raw["counts"].values())
  assert meta["rows_read"] == n_good + len(BAD_SKELETON) + 1
  assert meta["rows_rejected"] == len(BAD_SKELETON) + 1
  assert meta["rows_written"]["train"] + meta["rows_written"]["eval"] == n_good
  assert len(ali_raw["train"]) + len(ali_raw["eval"]) == n_good
  common = meta["side_files"]["ali_ccp_common_rows"]
  users = sum(c["users"] for c in ali_raw["counts"].values())
  assert common == {"read": users + len(BAD_COMMON) + 2, "joined": users, "unused": 1,
                    "rejected": len(BAD_COMMON) + 1}
  assert meta["source"] == "ali_ccp_raw"


def test_ali_ccp_every_bad_line_is_a_dead_letter_with_its_reason(ali_raw):
  reasons = _reasons(ali_raw)
  for line, fragments in BAD_SKELETON + BAD_COMMON:
    assert line in reasons, line
    for fragment in fragments:
      assert fragment in reasons[line], (line, reasons[line])
  dup_sample = [d for d in ali_raw["dead"] if "duplicate sample_id" in d["reason"]]
  assert [d["row"] for d in dup_sample] == [ali_raw["good_skeleton"][4]]
  dup_common = [d for d in ali_raw["dead"] if "duplicate common_feature_index" in
                d["reason"]]
  assert [d["row"] for d in dup_common] == [ali_raw["good_common"][2]]
  assert len(ali_raw["dead"]) == len(BAD_SKELETON) + len(BAD_COMMON) + 2
  assert all(d["source"].endswith(".csv") for d in ali_raw["dead"])


def test_ali_ccp_join_puts_user_features_on_each_impression(ali_raw):
  """The join is per part: the same index in the test part is another user profile."""
  commons = {}
  for part in ("good", "test"):
    for line in ali_raw[f"{part}_common"]:
      index, _, features = line.split(",")
      commons[part, index] = _good_entries(features)
  rows = {r["sample_id"]: r for r in ali_raw["train"] + ali_raw["eval"]}
  assert len(rows) == len(ali_raw["train"]) + len(ali_raw["eval"])
  checked = 0
  for part, line in [("good", l) for l in ali_raw["good_skeleton"]] + [
      ("test", l) for l in ali_raw["test_skeleton"]]:
    sid, click, purchase, index, _, features = line.split(",")
    item, user = _good_entries(features), commons[part, index]
    r = rows[sid]
    assert r["click"] == float(click) and r["purchase"] == float(purchase)
    assert r["301"] == item["301"][0] and r["205"] == item["205"][0]
    assert r["101"] == user["101"][0] and r["122"] == user["122"][0]
    for field in A.MULTI_FIELDS:  # multi-valued fields stay lists, in order
      assert r[field] == user[field], field
    assert r["scenario_x_group"] == f"{r['301']}_x_{r['122']}"
    checked += 1
  assert checked == len(rows)
  # purchases are read as the second task, each after a click
  assert [f.name for f in ali_raw["spec"].labels] == ["click", "purchase"]
  assert ali_raw["spec"]["purchase"].after == "click"
  purchases = [r for r in rows.values() if r["purchase"] == 1.0]
  assert purchases and all(r["click"] == 1.0 for r in purchases)
  # the split hashes the sample id: near 80/20
  assert 0.1 < len(ali_raw["eval"]) / len(rows) < 0.3


def test_count_bucket_tables_match_an_independent_count(ali_raw):
  spec = ali_raw["spec"]
  for name in ("user_activity", "item_popularity"):
    d = spec[name].derived
    counts = collections.Counter(r[d.source] for r in ali_raw["train"])
    expected = {v: _bucket(d.boundaries, c) for v, c in counts.items()}
    assert ali_raw["tables"][name] == expected, name
    assert len(set(expected.values())) > 1, name  # the test data spans buckets
    for r in ali_raw["train"] + ali_raw["eval"]:  # eval-only ids: bucket of count 0
      assert r[name] == expected.get(r[d.source], _bucket(d.boundaries, 0))
  assert any(r["101"] not in ali_raw["tables"]["user_activity"] for r in ali_raw["eval"])
  stats = ali_raw["stats"]["distribution"]
  assert sum(c["rows"] for c in stats["train"]["user_activity"].values()) == len(
      ali_raw["train"])


def test_tfds_loads_the_output_with_its_features_and_split_sizes(ali_raw):
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(PreprocessedData(ali_raw["out"]).tfds_dir)
  meta = ali_raw["metadata"]
  for split in ("train", "eval"):
    assert builder.info.splits[split].num_examples == meta["rows_written"][split]
    ds = builder.as_dataset(split=split)
    got = sorted(ex["sample_id"].decode() for ex in tfds.as_numpy(ds))
    assert got == sorted(r["sample_id"] for r in ali_raw[split])
  features = builder.info.features
  assert set(features.keys()) == set(ali_raw["spec"].names)
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train").take(1))))
  assert ex["click"].dtype == np.float32 and ex["109_14"].ndim == 1


@pytest.fixture(scope="module")
def ali_raw_multi(ali_raw, tmp_path_factory):
  import dataclasses
  out = str(tmp_path_factory.mktemp("ali_ccp_raw_multi"))
  preprocess.run(dataclasses.replace(ali_raw["config"], output_dir=out,
                                     direct_num_workers=2))
  return _snapshot(out, ali_raw["spec"])


def test_two_workers_give_the_same_output(ali_raw, ali_raw_multi):
  canon = lambda sers: sorted(tf.train.Example.FromString(s).SerializeToString(
      deterministic=True) for s in sers)
  for split in ("train", "eval"):
    assert canon(ali_raw_multi["serialized"][split]) == canon(
        ali_raw["serialized"][split]), split
  assert ali_raw_multi["tables"] == ali_raw["tables"]
  assert sorted(d["row"] for d in ali_raw_multi["dead"]) == sorted(
      d["row"] for d in ali_raw["dead"])
  for key in ("rows_read", "rows_written", "rows_rejected", "side_files", "vocab_sizes"):
    assert ali_raw_multi["metadata"][key] == ali_raw["metadata"][key], key


def test_exported_savedmodel_carries_the_tables_and_recomputes_derived_values(
    ali_raw, tmp_path):
  """Training and serving cannot disagree: the export's own lookups, fed only the raw
  ids of each eval example, give the values the Beam job wrote."""
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline import export, train
  spec, out = ali_raw["spec"], ali_raw["out"]
  model = train.build_model(out, ModelConfig(name="dnn"))
  version = export.export(model, spec, str(tmp_path / "export"))
  loaded = tf.saved_model.load(version)
  tables = loaded.model.embeddings.derived_tables
  for name in ("user_activity", "item_popularity"):
    keys, values = tf.raw_ops.LookupTableExportV2(
        table_handle=tables[name].resource_handle, Tkeys=tf.string, Tvalues=tf.string)
    inside = dict(zip([k.decode() for k in keys.numpy()],
                      [v.decode() for v in values.numpy()]))
    assert inside == ali_raw["tables"][name], name
  assert os.path.exists(os.path.join(version, "assets", "user_activity.txt"))
  # The same examples through the serving path's lookups (derived inputs not fed).
  serialized = tf.constant(ali_raw["serialized"]["eval"])
  fed = data.parse_batch(serialized, spec, for_serving=True)
  assert not set(fed) & {f.name for f in spec.derived_fields}
  recomputed = model.embeddings.derived_values(fed)
  for name in ("user_activity", "item_popularity", "scenario_x_group"):
    got = [v.decode() for v in recomputed[name].numpy()]
    assert got == [r[name] for r in ali_raw["eval"]], name
  served = loaded.signatures["serving_default"](examples=serialized)["probability"]
  assert np.allclose(served.numpy(),
                     model(fed)["probability"].numpy().reshape(-1), atol=1e-5)


def test_ali_ccp_raw_job_level_errors(tmp_path):
  (tmp_path / "sample_skeleton_train.csv").write_text("")
  with pytest.raises(PreprocessError, match="no common_features_train.csv"):
    preprocess.run(PreprocessConfig(
        raw=str(tmp_path / "*.csv"), output_dir=str(tmp_path / "out"),
        spec_path="ali_ccp_raw", source="ali_ccp_raw"))
  (tmp_path / "other.csv").write_text("")
  with pytest.raises(PreprocessError, match="other.csv: an Ali-CCP raw file"):
    preprocess.run(PreprocessConfig(
        raw=str(tmp_path / "*.csv"), output_dir=str(tmp_path / "out"),
        spec_path="ali_ccp_raw", source="ali_ccp_raw"))


# --- MovieLens (ml-100k layout) ---------------------------------------------------------
ML_BAD_RATINGS = [("1\t1\t5", ["expected 4 tab-separated", "got 3"]),
                  ("1\t1\tx\t880000000", ["rating 'x' is not a number"]),
                  ("1\t1\t7\t880000000", ["rating '7' is not in 1..5"]),
                  ("99\t1\t4\t880000000", ["user_id '99' is not in u.user"]),
                  ("1\t99\t4\t880000000", ["item_id '99' is not in u.item"])]
ML_BAD_USERS = [("20|30|M|writer", ["expected 5 |-separated", "got 4"]),
                ("21|old|M|writer|12345", ["age 'old' is not a number"])]
ML_BAD_ITEMS = [("30|Broken|01-Jan-1995", ["expected 24 |-separated", "got 3"])]


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
  root = tmp_path_factory.mktemp("ml")
  raw = root / "ml-100k"
  raw.mkdir()
  rng = np.random.default_rng(5)
  ages = [15, 19, 22, 30, 40, 47, 52, 60, 33, 26, 44, 18]
  users = [f"{u + 1}|{a}|{'MF'[u % 2]}|{['student', 'writer', 'other'][u % 3]}|0{u}123"
           for u, a in enumerate(ages)]
  users.append(users[0])  # a repeated user id
  items = []
  for i in range(1, 16):
    flags = ["0"] * 19
    flags[1 + i % 18] = "1"
    flags[5] = "1" if i % 3 == 0 else flags[5]
    title = "Café Noir (1996)" if i == 3 else f"Movie {i} (199{i % 10})"
    date = "" if i == 4 else f"01-Jan-199{i % 10}"
    items.append("|".join([str(i), title, date, "", "http://x"] + flags))
  ratings = []
  for n in range(300):  # every user and every item rated at least once
    u = n + 1 if n < len(ages) else int(rng.zipf(1.5)) % len(ages) + 1
    i = n - 99 if 100 <= n < 115 else int(rng.integers(1, 16))
    ratings.append(f"{u}\t{i}\t{int(rng.integers(1, 6))}\t"
                   f"{880_000_000 + n * 1000 + int(rng.integers(0, 999))}")
  (raw / "u.data").write_text("\n".join(ratings + [r for r, _ in ML_BAD_RATINGS]) + "\n")
  (raw / "u.user").write_text("\n".join(users + [u for u, _ in ML_BAD_USERS]) + "\n")
  (raw / "u.item").write_bytes(("\n".join(items + [i for i, _ in ML_BAD_ITEMS]) + "\n")
                               .encode("latin-1"))
  out = str(root / "out")
  preprocess.run(PreprocessConfig(
      raw=str(raw), output_dir=out, spec_path="movielens_100k", source="movielens",
      split_time_field="timestamp", split_time_quantile=0.75, direct_num_workers=1))
  snap = _snapshot(out, spec_lib.load_spec("movielens_100k"))
  snap.update(ratings=ratings, users=users, items=items, ages=ages)
  return snap


def test_movielens_joins_ratings_users_items(movielens):
  meta = movielens["metadata"]
  assert meta["rows_read"] == 300 + len(ML_BAD_RATINGS)
  assert meta["rows_rejected"] == len(ML_BAD_RATINGS)
  assert meta["side_files"]["movielens_users"] == {
      "read": 13 + 2, "joined": 12, "unused": 0, "rejected": 3}
  assert meta["side_files"]["movielens_items"] == {
      "read": 16, "joined": 15, "unused": 0, "rejected": 1}
  reasons = _reasons(movielens)
  for line, fragments in ML_BAD_RATINGS + ML_BAD_USERS + ML_BAD_ITEMS:
    for fragment in fragments:
      assert fragment in reasons[line], (line, reasons[line])
  assert sum("duplicate user id '1'" in r for r in reasons.values()) == 1
  rows = movielens["train"] + movielens["eval"]
  assert len(rows) == 300
  by_key = collections.Counter((r["user_id"], r["item_id"], r["timestamp"]) for r in rows)
  for line in movielens["ratings"]:
    u, i, rating, ts = line.split("\t")
    assert by_key[(u, i, float(np.float32(ts)))] >= 1  # float32 in the tf.Example
  for r in rows:
    u = int(r["user_id"]) - 1
    assert r["click"] == float(r["rating"] >= 4)
    assert r["age"] == movielens["ages"][u] and r["gender"] == "MF"[u % 2]
    assert r["age_bucket"] == _bucket([18, 25, 35, 45, 50, 56], r["age"])
    assert r["gender_x_age"] == f"{r['gender']}_x_{r['age_bucket']}"
    i = int(r["item_id"])
    assert ("Action" in r["genres"]) == (i % 18 == 0)
    assert ("Comedy" in r["genres"]) == (i % 3 == 0 or 1 + i % 18 == 5)
    assert r["release_year"] == ("unknown" if i == 4 else f"199{i % 10}")


def test_movielens_time_split_at_the_quantile(movielens):
  cutoff = movielens["metadata"]["split_time_cutoff"]
  assert cutoff is not None
  raw_ts = [float(line.split("\t")[3]) for line in movielens["ratings"]]
  assert len(movielens["eval"]) == sum(t >= cutoff for t in raw_ts)
  # (the tf.Example holds float32 times: 880M is exact to 64 s only)
  assert max(r["timestamp"] for r in movielens["train"]) <= cutoff + 64
  assert min(r["timestamp"] for r in movielens["eval"]) >= cutoff - 64
  share = len(movielens["eval"]) / 300
  assert share == pytest.approx(0.25, abs=0.05)
  # activity counts only the training window
  d = movielens["spec"]["user_activity"].derived
  counts = collections.Counter(r["user_id"] for r in movielens["train"])
  assert movielens["tables"]["user_activity"] == {
      u: _bucket(d.boundaries, c) for u, c in counts.items()}


def test_movielens_missing_folder_is_a_clear_error(tmp_path):
  with pytest.raises(PreprocessError, match="u.data, u.user and u.item"):
    preprocess.run(PreprocessConfig(
        raw=str(tmp_path), output_dir=str(tmp_path / "out"),
        spec_path="movielens_100k", source="movielens"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(split_time_field="nope"), "--split_time_field 'nope' is not a field"),
    (dict(split_time_field="gender"), "must be numeric"),
    (dict(split_time_cutoff=3.0), "need --split_time_field"),
    (dict(split_time_field="timestamp", split_key="user_id"),
     "--split_key=user_id and --split_time_field=timestamp contradict"),
    (dict(split_time_field="timestamp", split_time_quantile=1.5), r"in \(0, 1\)"),
    (dict(source="parquet"), "--source='parquet': expected one of"),
])
def test_bad_split_and_source_flags(tmp_path, kwargs, match):
  config = dict(raw=str(tmp_path), output_dir=str(tmp_path / "out"),
                spec_path="movielens_100k", source="movielens")
  config.update(kwargs)
  with pytest.raises(PreprocessError, match=match):
    preprocess.run(PreprocessConfig(**config))


def test_movielens_convert_writes_the_ml100k_layout(tmp_path):
  """`hmdn data fetch` rewrites RecBole's atomic files in the ml-100k layout."""
  from hmdn.beam_jobs import movielens as ml
  inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t4\t88\n"
  user = ("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
          "1\t24\tM\ttechnician\t85711\n")
  item = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "2\tGoldenEye\t1995\tAction Adventure Thriller\n3\tUntitled\t\t\n")
  counts = ml.convert(inter, user, item, str(tmp_path))
  assert counts == {"ratings": 1, "users": 1, "items": 2}
  assert (tmp_path / "u.data").read_text() == "1\t2\t4\t88\n"
  assert (tmp_path / "u.user").read_text() == "1|24|M|technician|85711\n"
  lines = (tmp_path / "u.item").read_text(encoding="latin-1").splitlines()
  cells = lines[0].split("|")
  assert len(cells) == 24 and cells[:3] == ["2", "GoldenEye", "01-Jan-1995"]
  assert [g for g, f in zip(ml.ML_GENRES, cells[5:]) if f == "1"] == [
      "Action", "Adventure", "Thriller"]
  assert lines[1].split("|")[2] == "" and set(lines[1].split("|")[5:]) == {"0"}


# --- Ali-CCP preprocessed CSV (the shared real sample) ----------------------------------
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "ali_ccp_sample")),
                    reason="../shared/data/ali_ccp_sample is not present")
def test_shared_ali_ccp_sample_reads_click_and_purchase(tmp_path):
  """The preprocessed CSV's two tasks: purchase a label after click, counted per task."""
  sample = os.path.join(SHARED_DATA, "ali_ccp_sample")
  out = str(tmp_path / "out")
  spec = spec_lib.load_spec("ali_ccp")
  assert [(f.name, f.after) for f in spec.labels] == [("click", None),
                                                      ("purchase", "click")]
  meta = preprocess.run(PreprocessConfig(
      raw=os.path.join(sample, "ali_ccp_*_sample.csv"), output_dir=out,
      spec_path="ali_ccp", eval_fraction=0.3, direct_num_workers=1))
  assert meta["rows_read"] == 200 and meta["rows_rejected"] == 0
  clicks = purchases = 0
  for name in glob.glob(os.path.join(sample, "ali_ccp_*_sample.csv")):
    with open(name) as f:
      for row in csv.DictReader(f):
        clicks += int(row["click"])
        purchases += int(row["purchase"])
  assert purchases > 0
  stats = PreprocessedData(out).stats["distribution"]
  total = {k: sum(stats[split]["__all__"]["__all__"]["tasks"][k]["positives"]
                  for split in ("train", "eval")) for k in ("click", "purchase")}
  assert total == {"click": clicks, "purchase": purchases}
  tasks = stats["train"]["__all__"]["__all__"]["tasks"]
  assert tasks["purchase"]["rate_after"] == pytest.approx(
      tasks["purchase"]["positives"] / tasks["click"]["positives"])


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "ali_ccp_sample")),
                    reason="../shared/data/ali_ccp_sample is not present")
def test_shared_ali_ccp_sample_end_to_end(tmp_path):
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline import train
  sample = os.path.join(SHARED_DATA, "ali_ccp_sample")
  out = str(tmp_path / "out")
  meta = preprocess.run(PreprocessConfig(
      raw=os.path.join(sample, "ali_ccp_*_sample.csv"), output_dir=out,
      spec_path="ali_ccp", eval_fraction=0.3, direct_num_workers=1))
  assert meta["rows_read"] == 200 and meta["rows_rejected"] == 0
  assert sum(meta["rows_written"].values()) == 200
  stats = PreprocessedData(out).stats
  assert set(stats["distribution"]["train"]["301"]) == {"1"}  # one scenario only
  assert stats["distinct_train"]["205"] > 10  # item ids vary (the user id does not)
  model = train.build_model(out, ModelConfig(name="hmdn_moe"))
  features, labels = next(iter(data.make_dataset(out, "eval", model.feature_spec, 16,
                                                 training=False)))
  p = model(features)["probability"].numpy()
  assert p.shape == (len(labels["click"]), 1) and np.all((p > 0) & (p < 1))


def test_movielens_ratings_count_in_the_progress_lines(tmp_path):
  """The progress lines read 0 rows on MovieLens (its per-line parser fed no
  progress file) while 95,939 rows were written."""
  import apache_beam as beam
  from hmdn.beam_jobs.local_runner import ProgressPrinter
  from hmdn.beam_jobs.sources import base
  from hmdn.beam_jobs.sources import movielens as ml_source
  prefix = str(tmp_path / "progress")
  lines = [("u.data", b"1\t1\t5\t880000000"), ("u.data", b"2\t3\t4\t880000001"),
           ("u.data", b"1\t1\tx\t880000000")]
  with beam.Pipeline() as p:
    _ = (p | beam.Create(lines)
         | base.ParseLines(ml_source._ParseRatingFn(), progress_prefix=prefix))
  assert ProgressPrinter(prefix).counts() == {"read": 3, "rejected": 1}


def test_movielens_histories_are_each_users_earlier_ratings(movielens):
  """Each rating's hist_items / hist_genres: the user's ratings with an earlier
  timestamp, most recent last (the fixture's times are distinct), at most 50."""
  from hmdn.beam_jobs.movielens import ML_GENRES
  good = [line.split("\t") for line in movielens["ratings"]]

  def first_genre(i):
    flagged = [1 + i % 18] + ([5] if i % 3 == 0 else [])
    return ML_GENRES[min(flagged)]

  rows = movielens["train"] + movielens["eval"]
  assert len(rows) == len(good)
  for r in rows:
    i = int(r["item_id"])
    assert r["first_genre"] == first_genre(i)
  # each (user, item, float32 time) is the key of a row; match rows to the raw lines
  for r in rows:
    candidates = [g for g in good if g[0] == r["user_id"] and g[1] == r["item_id"]
                  and float(np.float32(g[3])) == r["timestamp"]]
    assert candidates
    u, _, _, ts = candidates[0]
    earlier = sorted((g for g in good if g[0] == u and int(g[3]) < int(ts)),
                     key=lambda g: int(g[3]))
    assert r["hist_items"] == [g[1] for g in earlier][-50:]
    assert r["hist_genres"] == [first_genre(int(g[1])) for g in earlier][-50:]
  assert max(len(r["hist_items"]) for r in rows) == 50  # the zipf head user is cut
  eval_times = {float(g[3]) for g in good
                if float(g[3]) >= movielens["metadata"]["split_time_cutoff"]}
  assert eval_times
  stats = movielens["stats"]["sequences"]["hist_items"]
  assert stats["max_length"] == 50 and stats["truncated"] > 0


def test_ali_ccp_raw_reads_a_field_declared_a_sequence_in_file_order(ali_raw, tmp_path):
  """The shipped spec keeps the *_14 fields bags; declared a sequence, 109_14 is the
  list of its entries in the file's order, the last max_length kept and counted."""
  import dataclasses
  spec_dict = ali_raw["spec"].to_dict()
  for f in spec_dict["features"]:
    if f["name"] == "109_14":
      f.clear()
      f.update(name="109_14", kind="sequence", vocab_from="206", max_length=2)
  spec_path = str(tmp_path / "seq.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(spec_dict, f)
  out = str(tmp_path / "out")
  meta = preprocess.run(dataclasses.replace(ali_raw["config"], output_dir=out,
                                            spec_path=spec_path))
  snap = _snapshot(out, spec_lib.load_spec(spec_path))
  old = {r["sample_id"]: r for r in ali_raw["train"] + ali_raw["eval"]}
  new = snap["train"] + snap["eval"]
  assert len(new) == len(old) and meta["rows_rejected"] == ali_raw["metadata"][
      "rows_rejected"]
  assert all(r["109_14"] == old[r["sample_id"]]["109_14"][-2:] for r in new)
  cut = sum(len(r["109_14"]) > 2 for r in old.values())
  assert cut and snap["stats"]["sequences"]["109_14"]["truncated"] == cut
