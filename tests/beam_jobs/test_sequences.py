"""Sequences through the Beam job: raw lists (CSV cells, JSON arrays) and histories
derived per user, with a time split, bad rows, truncation, statistics and vocabularies.

Two small runs shared by module fixtures: a CSV log (a hot user, Zipf users, a user
whose rows all share one time, bad rows) split by time, and a JSONL log.
"""
import collections
import glob
import json
import os

import numpy as np
import pytest
import yaml

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData
from split_reader import read_split  # noqa: E402

SPEC = {"name": "seq_log", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "rid", "kind": "categorical", "role": "passthrough"},
    {"name": "user_id", "kind": "categorical", "user_id": True},
    {"name": "item_id", "kind": "categorical"},
    {"name": "cat", "kind": "categorical"},
    {"name": "clicked", "kind": "sequence", "vocab_from": "item_id", "max_length": 3},
    {"name": "hist_items", "kind": "sequence", "vocab_from": "item_id", "max_length": 5,
     "derived": {"kind": "history", "source": "user_id", "of": "item_id",
                 "order_by": "ts"}},
    {"name": "hist_cats", "kind": "sequence", "vocab_from": "cat", "max_length": 5,
     "derived": {"kind": "history", "source": "user_id", "of": "cat", "order_by": "ts"}},
]}
RAW = ["click", "ts", "rid", "user_id", "item_id", "cat", "clicked"]
HOT_ROWS = 400
N = 1_500
# (cells, what the dead-letter reason says)
BAD = [
    (dict(rid="bad_nan_ts", ts="nan"), ["'ts'", "finite"]),
    (dict(rid="bad_no_ts", ts=""), ["'ts'", "empty value"]),
    (dict(rid="bad_empty_elem", clicked="x1||x2"), ["'clicked' position 1", "empty"]),
]
UNBALANCED = '1,5,bad_quote,u1,ibq,c0,"x1|x2'  # the file's last line: a quote left open


def _good_rows():
  rng = np.random.default_rng(7)
  rows = []
  zipf = np.minimum(rng.zipf(1.5, N), 60)
  for k in range(N):
    user = "hot" if k < HOT_ROWS else f"u{zipf[k]}"
    clicked = [f"x{j}" for j in rng.integers(0, 20, rng.integers(0, 7))]
    rows.append({"click": str(int(rng.random() < 0.3)), "ts": str(int(rng.integers(0, 3000))),
                 "rid": f"r{k}", "user_id": user, "item_id": f"i{k}", "cat": f"c{k % 7}",
                 "clicked": "|".join(clicked)})
  for k in range(5):  # one user, one moment: nothing is earlier than anything
    rows.append({"click": "0", "ts": "100", "rid": f"flat{k}", "user_id": "flat",
                 "item_id": f"f{k}", "cat": "c1", "clicked": ""})
  return rows


def _expected_histories(rows, of, max_length):
  """The definition, computed naively: a row's user's rows strictly earlier in ts,
  ordered by (ts, the in-step `of` values: item, then category), the last
  max_length."""
  by_user = collections.defaultdict(list)
  for r in rows:
    by_user[r["user_id"]].append(r)
  out = {}
  for r in rows:
    earlier = sorted((x for x in by_user[r["user_id"]] if float(x["ts"]) < float(r["ts"])),
                     key=lambda x: (float(x["ts"]), repr(x["item_id"]), repr(x["cat"])))
    out[r["rid"]] = [x[of] for x in earlier][-max_length:]
  return out


def _dead(out):
  dead = []
  for path in glob.glob(f"{PreprocessedData(out).dead_letter_prefix}-*"):
    with open(path) as f:
      dead.extend(json.loads(line) for line in f if line.strip())
  return dead


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("seq_csv")
  spec_path = str(root / "seq.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(SPEC, f)
  good = _good_rows()
  ok = good[HOT_ROWS + 1]
  lines = [",".join(RAW)] + [",".join(r[c] for c in RAW) for r in good]
  lines += [",".join(dict(ok, **cells)[c] for c in RAW) for cells, _ in BAD]
  lines.append(UNBALANCED)
  with open(root / "log.csv", "w") as f:
    f.write("\n".join(lines) + "\n")
  out = str(root / "out")
  metadata = preprocess.run(PreprocessConfig(
      raw=str(root / "log.csv"), output_dir=out, spec_path=spec_path,
      split_time_field="ts", split_time_cutoff=2400.0, direct_num_workers=1))
  spec = spec_lib.load_spec(spec_path)
  rows = {s: read_split(out, spec, s)[0] for s in ("train", "eval")}
  return {"good": good, "metadata": metadata, "rows": rows, "out": out,
          "dead": _dead(out), "data": PreprocessedData(out), "spec_path": spec_path,
          "root": root}


def test_counters_reconcile_and_bad_rows_reach_the_dead_letter(csv_run):
  meta = csv_run["metadata"]
  written = sum(meta["rows_written"].values())
  assert meta["rows_read"] == written + meta["rows_rejected"]
  assert written == len(csv_run["good"])
  assert meta["rows_rejected"] == len(BAD) + 1
  reasons = {d["row"].split(",")[2]: d["reason"] for d in csv_run["dead"]}
  for cells, fragments in BAD:
    for fragment in fragments:
      assert fragment in reasons[cells["rid"]], (cells, reasons[cells["rid"]])
  assert "not a valid CSV record" in reasons["bad_quote"]


def test_histories_are_the_definition_end_to_end(csv_run):
  good = csv_run["good"]
  items = _expected_histories(good, "item_id", 5)
  cats = _expected_histories(good, "cat", 5)
  got = {r["rid"]: r for split in ("train", "eval") for r in csv_run["rows"][split]}
  assert set(got) == {r["rid"] for r in good}
  for rid, row in got.items():
    assert row["hist_items"] == items[rid], rid
    assert row["hist_cats"] == cats[rid], rid
  assert all(got[f"flat{k}"]["hist_items"] == [] for k in range(5))
  hot = [r for r in got.values() if r["user_id"] == "hot"]
  assert len(hot) == HOT_ROWS and max(len(r["hist_items"]) for r in hot) == 5


def test_a_training_rows_history_holds_no_eval_row(csv_run):
  rows = csv_run["rows"]
  eval_items = {r["item_id"] for r in rows["eval"]}
  train_items = {r["item_id"] for r in rows["train"]}
  assert all(float(r["ts"]) < 2400 for r in rows["train"])
  assert rows["eval"] and all(float(r["ts"]) >= 2400 for r in rows["eval"])
  for r in rows["train"]:
    assert not set(r["hist_items"]) & eval_items, r
  # an eval row's history holds the user's earlier rows of both periods
  held = {i for r in rows["eval"] for i in r["hist_items"]}
  assert held & train_items and held & eval_items


def test_raw_sequences_keep_the_most_recent_and_count_the_truncation(csv_run):
  good = {r["rid"]: r for r in csv_run["good"]}
  got = {r["rid"]: r for split in ("train", "eval") for r in csv_run["rows"][split]}
  cut = 0
  for rid, row in got.items():
    raw = [v for v in good[rid]["clicked"].split("|") if v]
    assert row["clicked"] == raw[-3:]
    cut += len(raw) > 3
  assert cut and any(row["clicked"] == [] for row in got.values())
  stats = csv_run["data"].stats["sequences"]
  assert stats["clicked"]["truncated"] == cut
  assert stats["clicked"]["rows"] == len(got)
  assert stats["clicked"]["longest"] == 3 and stats["clicked"]["max_length"] == 3
  lengths = [len(r["clicked"]) for r in got.values()]
  assert stats["clicked"]["mean_length"] == pytest.approx(np.mean(lengths))
  assert stats["clicked"]["share_empty"] == pytest.approx(lengths.count(0) / len(lengths))
  assert stats["clicked"]["share_truncated"] == pytest.approx(cut / len(got))
  hist = stats["hist_items"]
  by_user = collections.Counter(r["user_id"] for r in csv_run["good"])
  expected_cut = sum(1 for r in got.values()
                     if sum(1 for x in got.values() if x["user_id"] == r["user_id"]
                            and float(x["ts"]) < float(r["ts"])) > 5)
  assert hist["truncated"] == expected_cut and by_user["hot"] == HOT_ROWS
  assert stats["hist_cats"]["truncated"] == expected_cut


def test_sequence_values_count_in_no_vocabulary(csv_run):
  data = csv_run["data"]
  with open(data.vocab_path("item_id")) as f:
    vocab = f.read().splitlines()
  assert not any(v.startswith("x") for v in vocab)  # `clicked` values are not targets
  assert set(vocab) == {r["item_id"] for r in csv_run["rows"]["train"]}
  assert not os.path.exists(data.vocab_path("hist_items"))
  assert not os.path.exists(data.vocab_path("clicked"))


def test_a_time_split_on_another_field_is_refused(csv_run, tmp_path):
  spec = dict(SPEC, features=SPEC["features"][:6] + [
      {"name": "t2", "kind": "numeric", "role": "passthrough"}] + SPEC["features"][7:])
  path = str(tmp_path / "s.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(spec, f)
  with pytest.raises(PreprocessError, match=r"history 'hist_items' is ordered by 'ts'"):
    preprocess.run(PreprocessConfig(raw=str(csv_run["root"] / "log.csv"),
                                    output_dir=str(tmp_path / "o"), spec_path=path,
                                    split_time_field="t2", direct_num_workers=1))


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("seq_jsonl")
  spec_path = str(root / "seq.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(SPEC, f)
  rows = [{"click": 1, "ts": t, "rid": f"j{t}", "user_id": "u", "item_id": f"i{t}",
           "cat": "c", "clicked": [f"x{k}" for k in range(t % 6)]} for t in range(40)]
  bad = [dict(rows[0], rid="bad_obj", clicked=["x1", {"id": 2}]),
         dict(rows[0], rid="bad_null", clicked=["x1", None]),
         dict(rows[0], rid="bad_str", clicked={"a": 1}),
         # JSON's non-finite numbers as ids (json.dumps writes NaN and Infinity)
         dict(rows[0], rid="bad_nan_elem", clicked=[3, float("nan")]),
         dict(rows[0], rid="bad_inf_elem", clicked=[float("-inf")])]
  with open(root / "log.jsonl", "w") as f:
    for r in rows + bad:
      f.write(json.dumps(r) + "\n")
    f.write('{"click": 1, "ts": NaN, "rid": "bad_nan", "user_id": "u", "item_id": "i",'
            ' "cat": "c", "clicked": []}\n')
  out = str(root / "out")
  meta = preprocess.run(PreprocessConfig(raw=str(root / "log.jsonl"), output_dir=out,
                                         spec_path=spec_path, split_time_field="ts",
                                         split_time_cutoff=1000.0, direct_num_workers=1))
  spec = spec_lib.load_spec(spec_path)
  return {"rows": rows, "meta": meta, "got": read_split(out, spec, "train")[0],
          "dead": _dead(out)}


def test_jsonl_arrays_and_their_bad_elements(jsonl_run):
  meta = jsonl_run["meta"]
  assert meta["rows_read"] == 46 and meta["rows_rejected"] == 6
  assert sum(meta["rows_written"].values()) == len(jsonl_run["rows"])
  got = {r["rid"]: r for r in jsonl_run["got"]}
  for r in jsonl_run["rows"]:
    assert got[r["rid"]]["clicked"] == r["clicked"][-3:]
    assert got[r["rid"]]["hist_items"] == [f"i{t}" for t in range(r["ts"])][-5:]
  reasons = {json.loads(d["row"])["rid"]: d["reason"] for d in jsonl_run["dead"]}
  assert "field 'clicked' position 1: {'id': 2} is not a categorical" in reasons["bad_obj"]
  assert "field 'clicked' position 1: None is not a categorical" in reasons["bad_null"]
  assert "is not a sequence" in reasons["bad_str"]
  assert "'ts'" in reasons["bad_nan"] and "finite" in reasons["bad_nan"]
  assert "field 'clicked' position 1: nan is not a categorical value" in reasons[
      "bad_nan_elem"]
  assert "field 'clicked' position 0: -inf is not a categorical value" in reasons[
      "bad_inf_elem"]


def test_the_example_encoder_writes_sequences_as_tensorflow_does():
  import tensorflow as tf
  from hmdn.beam_jobs.transforms.examples import ExampleEncoder
  spec = spec_lib.spec_from_dict(SPEC)
  columns = {"click": [1.0, 0.0, 1.0], "ts": [1.0, 2.0, 3.0], "rid": ["a", "b", "c"],
             "user_id": ["u", "u", "v"], "item_id": ["i1", "i2", "i3"],
             "cat": ["c", "c", "d"], "clicked": [["x"], [], ["é", "x", "y"]],
             "hist_items": [[], ["i1"], ["i1", "i2", "i1"]],
             "hist_cats": [[], ["c"], ["c", "c", "c"]]}
  encoder = ExampleEncoder(spec)
  for _ in range(2):  # the second time from the cache
    got = encoder.encode(columns)
    for i, serialized in enumerate(got):
      example = tf.train.Example.FromString(serialized)
      for name in ("clicked", "hist_items", "hist_cats"):
        assert [v.decode() for v in example.features.feature[name].bytes_list.value] == \
            columns[name][i]


def test_sequences_encoded_from_the_previous_row_match_a_fresh_encoding():
  """A key's consecutive histories (grown, slid, skipping rows, tied, repeating one
  value) and unrelated lists: the bytes built from the previous row's equal each row
  encoded alone, and TensorFlow parses them back to the lists."""
  import tensorflow as tf
  from hmdn.beam_jobs.transforms.examples import ExampleEncoder
  spec = spec_lib.spec_from_dict(SPEC)
  rng = np.random.default_rng(0)
  stream = [f"i{v}" for v in rng.integers(0, 4, 400)]  # few values: overlaps by chance
  histories, end = [], 0
  while len(histories) < 300:
    step = int(rng.choice([0, 1, 1, 1, 2, 3, 5, 9]))  # 0: a tie, 5 and 9: past the reuse
    end = min(end + step, len(stream))
    if rng.random() < 0.1:
      histories.append([f"é{v}" for v in rng.integers(0, 3, rng.integers(0, 7))])
    else:
      histories.append(stream[max(0, end - 5):end])
  n = len(histories)
  columns = {"click": [0.0] * n, "ts": [0.0] * n, "rid": ["r"] * n, "user_id": ["u"] * n,
             "item_id": ["i"] * n, "cat": ["c"] * n, "clicked": [[]] * n,
             "hist_items": histories, "hist_cats": [h[::-1] for h in histories]}
  together = ExampleEncoder(spec).encode(columns)
  alone = ExampleEncoder(spec)
  for i, serialized in enumerate(together):
    assert serialized == alone.encode({k: [v[i]] for k, v in columns.items()})[0], i
    example = tf.train.Example.FromString(serialized)
    for name in ("hist_items", "hist_cats"):
      assert [v.decode() for v in example.features.feature[name].bytes_list.value] == \
          columns[name][i]


def test_two_workers_write_the_same_histories_and_counts(csv_run, tmp_path):
  out = str(tmp_path / "two")
  meta = preprocess.run(PreprocessConfig(
      raw=str(csv_run["root"] / "log.csv"), output_dir=out,
      spec_path=csv_run["spec_path"], split_time_field="ts", split_time_cutoff=2400.0,
      direct_num_workers=2))
  spec = spec_lib.load_spec(csv_run["spec_path"])
  for split in ("train", "eval"):
    two = sorted(map(repr, read_split(out, spec, split)[0]))
    one = sorted(map(repr, csv_run["rows"][split]))
    assert two == one, split
  for key in ("rows_read", "rows_written", "rows_rejected"):
    assert meta[key] == csv_run["metadata"][key]
  assert PreprocessedData(out).stats["sequences"] == csv_run["data"].stats["sequences"]
