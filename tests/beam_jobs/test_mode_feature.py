"""The `mode` derived kind (a per-user profile) end to end, on a hand-written log.

One Beam run on a log whose every user's mode is known (a tie broken by string order, a
device with a tab and one with a backslash, a user seen only in eval), then checks
against an independent count: the table, the values in both splits, the model's ids
and the model's recomputation from the raw inputs alone.
"""
import bisect
import collections
import csv

import pytest
import tensorflow as tf
import yaml

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.transforms.derived import _ModeFn
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData, unescape_value

HOUR_EDGES = [6, 12, 18]
SPEC = {"name": "mode_log", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "rid", "kind": "categorical", "role": "passthrough"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "user_id", "kind": "categorical", "user_id": True},
    {"name": "device", "kind": "categorical"},
    {"name": "hour", "kind": "numeric", "boundaries": [12]},
    {"name": "user_top_device", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "mode", "source": "user_id", "of": "device"}},
    {"name": "hour_bucket", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "bucket", "source": "hour", "boundaries": HOUR_EDGES}},
    {"name": "user_top_hour", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "mode", "source": "user_id", "of": "hour_bucket"}},
]}
CUTOFF = 100  # ts >= CUTOFF: eval
TAB_DEVICE, SLASH_DEVICE = "tab\tdev", "a\\b"
# (user, device, hour, ts): u1 ios/bucket 1; u2 ties android-ios and buckets 2-3 (the
# smaller wins); u3 the tab device; u4 ties the backslash device with pc; u5 eval only.
ROWS = [("u1", "ios", 1, 1), ("u1", "ios", 7, 2), ("u1", "android", 8, 3),
        ("u2", "android", 13, 4), ("u2", "ios", 20, 5),
        ("u3", TAB_DEVICE, 3, 6), ("u3", "pc", 4, 7), ("u3", TAB_DEVICE, 23, 8),
        ("u4", SLASH_DEVICE, 12, 9), ("u4", "pc", 19, 10),
        ("u1", "pc", 22, 101), ("u2", "pc", 2, 102), ("u3", "ios", 9, 103),
        ("u4", "ios", 9, 104), ("u5", "android", 9, 105), ("u5", "ios", 15, 106)]


def _expected_modes(rows, of):
  """Independent count: each user's most frequent `of` over the training rows, the
  smallest value among the tied."""
  counts = collections.defaultdict(collections.Counter)
  for r in rows:
    if r["ts"] < CUTOFF:
      counts[r["user_id"]][of(r)] += 1
  return {u: sorted(c.items(), key=lambda vc: (-vc[1], vc[0]))[0][0]
          for u, c in counts.items()}


def _hour_bucket(r):
  return str(bisect.bisect_right(HOUR_EDGES, r["hour"]))


@pytest.fixture(scope="module")
def job(tmp_path_factory, read_split):
  root = tmp_path_factory.mktemp("mode_log")
  spec_path = str(root / "mode_log.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(SPEC, f)
  raw = [{"click": str(i % 2), "rid": f"r{i}", "ts": str(ts), "user_id": user,
          "device": device, "hour": str(hour)}
         for i, (user, device, hour, ts) in enumerate(ROWS)]
  with open(root / "log.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(raw[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(raw)
  out = str(root / "out")
  preprocess.run(PreprocessConfig(
      raw=str(root / "log.csv"), output_dir=out, spec_path=spec_path,
      split_time_field="ts", split_time_cutoff=CUTOFF, direct_num_workers=1,
      tfds=False))
  spec = spec_lib.load_spec(spec_path)
  layout = PreprocessedData(out)
  typed = [dict(r, ts=float(r["ts"]), hour=float(r["hour"])) for r in raw]
  split = {s: read_split(out, spec, s) for s in (TRAIN, EVAL)}
  return {"out": out, "spec": spec, "layout": layout, "raw": typed,
          "log": str(root / "log.csv"), "spec_path": spec_path,
          "records": {s: v[0] for s, v in split.items()},
          "serialized": {s: v[1] for s, v in split.items()},
          "expected": {"user_top_device": _expected_modes(typed, lambda r: r["device"]),
                       "user_top_hour": _expected_modes(typed, _hour_bucket)}}


def test_tables_and_written_values_are_each_users_training_mode(job):
  expected, layout = job["expected"], job["layout"]
  assert expected["user_top_device"] == {"u1": "ios", "u2": "android", "u3": TAB_DEVICE,
                                         "u4": SLASH_DEVICE}  # the log is as intended
  assert expected["user_top_hour"]["u2"] == "2"  # the tied buckets "2" and "3"
  for name in ("user_top_device", "user_top_hour"):
    assert layout.read_table(name) == expected[name], name
    assert job["layout"].metadata["tables"][name] == layout.table_relpath(name)
  with open(layout.table_path("user_top_device"), encoding="utf-8") as f:
    assert "u3\ttab\\tdev\n" in f.read()  # escaped: one line, two columns
  records = job["records"]
  assert {r["rid"] for r in records[TRAIN] + records[EVAL]} == {
      r["rid"] for r in job["raw"]}
  assert {r["user_id"] for r in records[EVAL]} >= {"u5"}
  for name in ("user_top_device", "user_top_hour"):
    for r in records[TRAIN] + records[EVAL]:  # eval rows use the training table
      assert r[name] == expected[name].get(r["user_id"], ""), (name, r["rid"])
  vocab = [unescape_value(v) for v in tf.io.gfile.GFile(
      layout.vocab_path("user_top_device")).read().splitlines()]
  assert sorted(vocab) == sorted(expected["user_top_device"].values())


def test_mode_combine_breaks_ties_by_the_smallest_value_in_any_merge_order():
  fn = _ModeFn()
  inputs = [(2, "ios"), (3, "pc"), (3, "android"), (1, "a")]
  for order in (inputs, inputs[::-1], inputs[1:] + inputs[:1]):
    halves = [order[:2], order[2:]]
    accs = []
    for half in halves:
      acc = fn.create_accumulator()
      for x in half:
        acc = fn.add_input(acc, x)
      accs.append(acc)
    assert fn.extract_output(fn.merge_accumulators(
        [fn.create_accumulator()] + accs)) == "android"


def test_model_looks_the_mode_up_and_unseen_users_get_the_oov_id(job, derived_checks):
  derived_checks.model_lookup(job, "user_top_device", ["u1", "u2", "u3", "u4", "u5", "nobody"])


def test_tfrecord_values_equal_the_models_recomputation_from_raw_inputs(job,
                                                                       derived_checks):
  derived_checks.recomputation(job)


def test_no_training_row_gives_empty_tables_and_every_user_unseen(job, tmp_path,
                                                                read_split):
  out = str(tmp_path / "out")
  preprocess.run(PreprocessConfig(
      raw=job["log"], output_dir=out, spec_path=job["spec_path"],
      split_time_field="ts", split_time_cutoff=0, direct_num_workers=1, tfds=False))
  layout = PreprocessedData(out)
  assert layout.rows(TRAIN) == 0 and layout.rows(EVAL) == len(ROWS)
  for name in ("user_top_device", "user_top_hour"):
    assert layout.read_table(name) == {}
    assert name in layout.metadata["tables"]
  records, _ = read_split(out, job["spec"], EVAL)
  assert {r["user_top_device"] for r in records} == {""}
