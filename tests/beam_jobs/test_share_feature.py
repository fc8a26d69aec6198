"""The `share` derived kind (a per-key histogram entry) end to end, on a hand-written log.

One Beam run on a log whose every user's device and hour-bucket shares are known (a
share exactly on a boundary, a device with a tab, a user id with a tab and one with a
backslash, a user seen only in eval, rows after the cutoff that would change a share
if counted), with a mode and shares on the same (source, of), then checks against an
independent count in exact fractions: the tables, the values in both splits, and the
model's recomputation from the raw inputs alone; a second run of the mode alone and of
a share alone writes the same tables (the shared pair counts change nothing).
"""
import bisect
import collections
import csv
import fractions

import pytest
import tensorflow as tf
import yaml

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.transforms.derived import _SumCountsFn, _share_counts
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, TRAIN, PreprocessedData, unescape_value

HOUR_EDGES = [6, 12, 18]
SHARE_EDGES = [0.25, 0.5, 0.75]  # exact in float32: a share of 1/2 is on a boundary
TAB_DEVICE = "tab\tdev"
TAB_USER, SLASH_USER = "u\t3", "u\\4"


def _share(name, of, value, dim=2):
  return {"name": name, "kind": "categorical", "embedding_dim": dim,
          "derived": {"kind": "share", "source": "user_id", "of": of, "value": value,
                      "boundaries": SHARE_EDGES}}


SHARES = {"share_ios": ("device", "ios"), "share_tab": ("device", TAB_DEVICE),
          "share_night": ("hour_bucket", "0"), "share_evening": ("hour_bucket", "3")}
SPEC = {"name": "share_log", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "rid", "kind": "categorical", "role": "passthrough"},
    {"name": "ts", "kind": "numeric", "role": "passthrough"},
    {"name": "user_id", "kind": "categorical", "user_id": True},
    {"name": "device", "kind": "categorical"},
    {"name": "hour", "kind": "numeric", "boundaries": [12]},
    {"name": "top_device", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "mode", "source": "user_id", "of": "device"}},
    _share("share_ios", *SHARES["share_ios"]),
    _share("share_tab", *SHARES["share_tab"]),
    {"name": "hour_bucket", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "bucket", "source": "hour", "boundaries": HOUR_EDGES}},
    _share("share_night", *SHARES["share_night"]),
    _share("share_evening", *SHARES["share_evening"]),
]}
CUTOFF = 100  # ts >= CUTOFF: eval
# (user, device, hour, ts): u1 ios 2/4 (on a boundary), night 2/4; u2 ios 0/3, evening
# 3/3; the tab user 3/4 on the tab device (on a boundary) and 1/4 ios; the backslash
# user 1/5 ios; u5 eval only. Eval rows would move every share if they were counted.
ROWS = [("u1", "ios", 1, 1), ("u1", "ios", 7, 2), ("u1", "android", 2, 3),
        ("u1", "pc", 13, 4),
        ("u2", "android", 19, 5), ("u2", "pc", 20, 6), ("u2", "pc", 23, 7),
        (TAB_USER, TAB_DEVICE, 3, 8), (TAB_USER, TAB_DEVICE, 9, 9),
        (TAB_USER, TAB_DEVICE, 21, 10), (TAB_USER, "ios", 22, 11),
        (SLASH_USER, "ios", 12, 12), (SLASH_USER, "pc", 12, 13),
        (SLASH_USER, "pc", 0, 14), (SLASH_USER, "android", 5, 15),
        (SLASH_USER, "pc", 18, 16),
        ("u1", "ios", 2, 101), ("u1", "ios", 3, 102), ("u2", "ios", 1, 103),
        (TAB_USER, "pc", 9, 104), (SLASH_USER, "ios", 2, 105),
        ("u5", "ios", 9, 106), ("u5", "android", 20, 107)]


def _hour_bucket(r):
  return str(bisect.bisect_right(HOUR_EDGES, r["hour"]))


OF = {"device": lambda r: r["device"], "hour_bucket": _hour_bucket}


def _expected_shares(rows, of, value):
  """Independent count: each user's training rows with `of` == value over all its
  training rows, in exact fractions, bucketized (a share on a boundary goes up)."""
  hits, totals = collections.Counter(), collections.Counter()
  for r in rows:
    if r["ts"] < CUTOFF:
      totals[r["user_id"]] += 1
      hits[r["user_id"]] += OF[of](r) == value
  return {u: str(bisect.bisect_right([fractions.Fraction(b) for b in SHARE_EDGES],
                                     fractions.Fraction(hits[u], n)))
          for u, n in totals.items()}


def _run(root, name, spec_dict, log):
  spec_path = str(root / f"{name}.yaml")
  with open(spec_path, "w") as f:
    yaml.safe_dump(spec_dict, f)
  out = str(root / name)
  preprocess.run(PreprocessConfig(
      raw=log, output_dir=out, spec_path=spec_path, split_time_field="ts",
      split_time_cutoff=CUTOFF, direct_num_workers=1, tfds=False))
  return out, spec_path


@pytest.fixture(scope="module")
def job(tmp_path_factory, read_split):
  root = tmp_path_factory.mktemp("share_log")
  raw = [{"click": str(i % 2), "rid": f"r{i}", "ts": str(ts), "user_id": user,
          "device": device, "hour": str(hour)}
         for i, (user, device, hour, ts) in enumerate(ROWS)]
  log = str(root / "log.csv")
  with open(log, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(raw[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(raw)
  out, spec_path = _run(root, "out", SPEC, log)
  spec = spec_lib.load_spec(spec_path)
  typed = [dict(r, ts=float(r["ts"]), hour=float(r["hour"])) for r in raw]
  split = {s: read_split(out, spec, s) for s in (TRAIN, EVAL)}
  return {"root": root, "log": log, "out": out, "spec": spec,
          "layout": PreprocessedData(out), "raw": typed,
          "records": {s: v[0] for s, v in split.items()},
          "serialized": {s: v[1] for s, v in split.items()},
          "expected": {name: _expected_shares(typed, of, value)
                       for name, (of, value) in SHARES.items()}}


def test_tables_and_written_values_are_each_users_bucketed_training_share(job):
  expected, layout = job["expected"], job["layout"]
  assert expected["share_ios"] == {"u1": "2", "u2": "0", TAB_USER: "1",  # as intended
                                   SLASH_USER: "0"}
  assert expected["share_tab"][TAB_USER] == "3" and expected["share_night"]["u1"] == "2"
  assert expected["share_evening"]["u2"] == "3"
  for name in SHARES:
    assert layout.read_table(name) == expected[name], name
    assert layout.metadata["tables"][name] == layout.table_relpath(name)
  with open(layout.table_path("share_ios"), encoding="utf-8") as f:
    text = f.read()
  assert "u\\t3\t1\n" in text and "u\\\\4\t0\n" in text  # escaped keys, bucket ids
  records = job["records"]
  assert {r["rid"] for r in records[TRAIN] + records[EVAL]} == {
      r["rid"] for r in job["raw"]}
  assert "u5" in {r["user_id"] for r in records[EVAL]}
  for name in SHARES:
    for r in records[TRAIN] + records[EVAL]:  # eval rows use the training table
      assert r[name] == expected[name].get(r["user_id"], ""), (name, r["rid"])
  assert {r["share_ios"] for r in records[EVAL] if r["user_id"] == "u5"} == {""}
  vocab = [unescape_value(v) for v in tf.io.gfile.GFile(
      layout.vocab_path("share_ios")).read().splitlines()]
  assert sorted(vocab) == sorted(set(expected["share_ios"].values()))


def test_share_counts_sum_element_by_element_in_any_merge_order():
  fn = _SumCountsFn()
  inputs = [_share_counts((("u", of), c), ["ios", "pc"])[1]
            for of, c in (("ios", 2), ("pc", 3), ("android", 4), ("ios", 1))]
  for order in (inputs, inputs[::-1], inputs[1:] + inputs[:1]):
    accs = []
    for half in (order[:1], order[1:]):
      acc = fn.create_accumulator()
      for x in half:
        acc = fn.add_input(acc, x)
      accs.append(acc)
    assert fn.extract_output(fn.merge_accumulators(
        [fn.create_accumulator()] + accs)) == (3, 3, 10)


def test_model_looks_the_share_up_and_unseen_users_get_the_oov_id(job, derived_checks):
  derived_checks.model_lookup(job, "share_ios", ["u1", "u2", TAB_USER, SLASH_USER, "u5", "nobody"])


def test_tfrecord_values_equal_the_models_recomputation_from_raw_inputs(job,
                                                                       derived_checks):
  derived_checks.recomputation(job)


def test_a_mode_and_shares_on_one_pair_agree_with_separate_runs(job):
  """The mode alone, and a device share alone, write the tables of the joint run."""
  base = [f for f in SPEC["features"] if "derived" not in f]
  by_name = {f["name"]: f for f in SPEC["features"]}
  layout = job["layout"]
  for name in ("top_device", "share_tab"):
    out, _ = _run(job["root"], f"alone_{name}",
                  {"name": "alone", "features": base + [by_name[name]]}, job["log"])
    alone = PreprocessedData(out).read_table(name)
    assert alone == layout.read_table(name), name
  assert layout.read_table("top_device")[TAB_USER] == TAB_DEVICE
