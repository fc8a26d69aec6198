"""Regression tests of issue 12's data side: bad raw values are dead-lettered with their
reason (never coerced, never aborting the job), inputs are never deleted, a killed or
failed run leaves no directory a reader accepts, and the counters must reconcile.

Three Beam runs are shared by module fixtures (a CSV log written into the leftovers of a
killed run, a JSONL log, and a run whose counters are made not to add up); the other
tests run no pipeline.
"""
import errno
import glob
import json
import os

import pytest
import yaml

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError
from hmdn.beam_jobs.transforms import tfrecord_sink
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import (IncompleteDataError, PreprocessedData,
                                        unescape_value)
from hmdn.pipeline import faults

SPEC = {"name": "bad_input", "features": [
    # First column, optional: a BOM left on the header would rename it, and every row
    # would silently take the default.
    {"name": "x", "kind": "numeric", "default": 0},
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "uid", "kind": "categorical", "user_id": True},
    {"name": "cat", "kind": "categorical"},
    {"name": "tags", "kind": "multi_categorical"},
    {"name": "uid_count", "kind": "categorical",
     "derived": {"kind": "count_bucket", "source": "uid", "boundaries": [2]}},
]}
HEADER = "x,click,uid,cat,tags"
BIG = 20_000  # characters: over spec_lib.MAX_CELL_CHARS, under the csv module's limit
HUGE = 200_000  # over the csv module's field limit (131072): a csv.Error

# CSV lines (bytes) and fragments of their dead-letter reason.
BAD_CSV = [
    (b"1e39,1,bad_big,c0,t1", ["'x'", "'1e39'", "float32"]),
    (b"-1e39,1,bad_negbig,c0,t1", ["'x'", "float32"]),
    (b"nan,1,bad_nan,c0,t1", ["'x'", "'nan'", "finite"]),
    (b"inf,1,bad_inf,c0,t1", ["'x'", "finite"]),
    (b"true,1,bad_bool,c0,t1", ["'x'", "'true'", "not a number"]),
    (b"1,1,bad_\xff\xfe,c0,t1", ["not valid utf-8", "offset 8"]),
    (b"1,1,bad_large," + b"c" * BIG + b",t1", ["'cat'", f"{BIG} characters",
                                                 str(spec_lib.MAX_CELL_CHARS)]),
    (b"1,1,bad_huge," + b"c" * HUGE + b",t1", ["not a valid CSV record", "field limit"]),
    (b"1,1,bad_many,c0,t1,extra", ["expected 5 columns", "got 6"]),
    (b"1,1,bad_few", ["expected 5 columns", "got 3"]),
    (b'1,1,"bad_quote"x,c0,t1', ["not a valid CSV record"]),
    # Python's float() takes these; the strict number grammar does not.
    (b"1_000,1,bad_underscore,c0,t1", ["'x'", "'1_000'", "ASCII decimal"]),
    ("\uff11\uff12,1,bad_fullwidth,c0,t1".encode(), ["'x'", "ASCII decimal"]),
    ("1,\uff11,bad_fullwidth_label,c0,t1".encode(), ["'click'", "ASCII decimal"]),
]
# Good ids that a vocabulary file must round-trip (a tab in a quoted CSV cell; line
# breaks in one: RFC 4180 records of several lines, each counted as one row).
ODD_CSV_IDS = ["tab\there", "back\\slash\\t", "ünïcødé 😀", "new\nline", "crlf\r\nx",
               'quote"\n"d']


def _write_spec(root):
  path = str(root / "spec.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(SPEC, f)
  return path


def _dead(out):
  rows = []
  for path in sorted(glob.glob(f"{PreprocessedData(out).dead_letter_prefix}-*.jsonl")):
    with open(path, encoding="utf-8") as f:
      rows.extend(json.loads(line) for line in f if line.strip())
  return rows


def _vocab(out, field):
  """A vocabulary file's values, unescaped (TensorFlow splits lines on \\n only)."""
  with open(PreprocessedData(out).vocab_path(field), encoding="utf-8") as f:
    text = f.read()
  assert text.endswith("\n")
  return [unescape_value(line) for line in text[:-1].split("\n")]


def _table(out, field):
  with open(PreprocessedData(out).table_path(field), encoding="utf-8") as f:
    lines = f.read().split("\n")[:-1]
  return {unescape_value(k): b for k, b in (line.split("\t") for line in lines)}


def _stale_paths(out):
  """Files and directories a killed run leaves: what the next run must remove."""
  layout = PreprocessedData(out)
  split_dir = os.path.dirname(layout.split_prefix("train"))
  return {
      "shard": f"{layout.split_prefix('train')}-00002-of-00003{layout.SHARD_SUFFIX}",
      "beam_temp": os.path.join(split_dir, "beam-temp-part-0123abcd", "x"),
      "beam_temp_top": os.path.join(out, "beam-temp-rows-4567", "y"),
      "staging": os.path.join(out, f"{preprocess.STAGING_PREFIX}deadbeef",
                              layout.VOCAB_DIR, "uid.txt"),
      "vocab": layout.vocab_path("gone"),
  }


def _leftovers(out):
  found = []
  for root, dirs, files in os.walk(out):
    found += [os.path.join(root, d) for d in dirs
              if d.startswith(("beam-temp-", preprocess.STAGING_PREFIX))]
  return found


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
  """A CSV log with a BOM header and every bad cell, read through two globs that
  match the same file, into a directory a killed run left behind."""
  root = tmp_path_factory.mktemp("bad_csv")
  spec_path = _write_spec(root)
  good = [f"{i % 7}.5,{i % 2},u{i % 5},c{i % 3},t{i % 4}|t9".encode() for i in range(30)]
  odd = ["2," + "1," + '"' + v.replace('"', '""') + '"' + ",c1,t1" for v in ODD_CSV_IDS]
  lines = [b"\xef\xbb\xbf" + HEADER.encode()] + good[:15] + [b for b, _ in BAD_CSV]
  lines += [o.encode("utf-8") for o in odd * 2] + good[15:]
  raw = root / "raw"
  raw.mkdir()
  (raw / "log.csv").write_bytes(b"\n".join(lines) + b"\n")

  out = str(root / "out")
  stale = _stale_paths(out)
  for path in stale.values():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write("left by a killed run")
  refused = []
  for read in (lambda: PreprocessedData(out).metadata, lambda: PreprocessedData(out).spec,
               lambda: PreprocessedData(out).stats):
    with pytest.raises(IncompleteDataError, match="not a complete") as e:
      read()
    refused.append(str(e.value))
  metadata = preprocess.run(PreprocessConfig(
      raw=f"{raw}/log.csv,{raw}/*.csv", output_dir=out, spec_path=spec_path,
      split_time_field="x", split_time_cutoff=1e9,  # every row in train
      direct_num_workers=1, tfds=False))
  return {"out": out, "raw": raw, "metadata": metadata, "dead": _dead(out),
          "stale": stale, "refused": refused, "good": good, "odd": odd}


def test_killed_run_leftovers_are_refused_then_cleaned(csv_run):
  assert len(csv_run["refused"]) == 3  # metadata, spec and stats all refused before
  for name, path in csv_run["stale"].items():
    assert not os.path.exists(path), (name, path)
  assert _leftovers(csv_run["out"]) == []
  assert PreprocessedData(csv_run["out"]).metadata == csv_run["metadata"]


def test_every_bad_csv_value_is_dead_lettered_with_its_reason(csv_run):
  dead = {d["row"]: d["reason"] for d in csv_run["dead"]}
  for line, fragments in BAD_CSV:
    row = line.decode("utf-8", "backslashreplace")
    assert row in dead, row[:60]
    for fragment in fragments:
      assert fragment in dead[row], (row[:60], dead[row])
  meta = csv_run["metadata"]
  assert meta["rows_rejected"] == len(BAD_CSV) == len(csv_run["dead"])
  n_good = len(csv_run["good"]) + 2 * len(ODD_CSV_IDS)
  assert meta["rows_written"] == {"train": n_good, "eval": 0}
  assert meta["rows_read"] == n_good + len(BAD_CSV)


def test_two_globs_matching_one_file_read_it_once(csv_run):
  meta = csv_run["metadata"]
  path = str(csv_run["raw"] / "log.csv")
  assert meta["raw"] == [path]
  assert meta["raw_matched_twice"] == [path]


def test_bom_on_the_header_is_stripped(csv_run):
  """x is the first column: with the BOM kept, x would be missing and default to 0."""
  stats = PreprocessedData(csv_run["out"]).stats
  assert stats["missing"]["x"] == 0
  expected = [float(g.split(b",")[0]) for g in csv_run["good"]] + [2.0] * len(
      csv_run["odd"]) * 2
  moments = stats["numeric"]["x"]
  assert moments["count"] == len(expected)
  assert moments["mean"] == pytest.approx(sum(expected) / len(expected))


def test_ids_with_tabs_and_unicode_round_trip_in_vocab_and_table(csv_run):
  vocab = _vocab(csv_run["out"], "uid")
  assert set(vocab) == {f"u{i}" for i in range(5)} | set(ODD_CSV_IDS)
  assert len(vocab) == len(set(vocab))
  table = _table(csv_run["out"], "uid_count")
  assert set(table) == set(vocab)
  for v in ODD_CSV_IDS:
    assert table[v] == "1"  # seen twice: bucket of count 2 with boundaries [2]


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_jsonl")
  spec_path = _write_spec(root)
  good = [{"x": 1.5 + i, "click": i % 2, "uid": f"j{i % 4}", "cat": f"c{i % 3}",
           "tags": ["t1", "t2"][:1 + i % 2]} for i in range(20)]
  odd_ids = ["new\nline", "tab\there", "cr\rlf\r\n", "back\\n", "\\", "x\u2028y",
             "😀"]
  good += [dict(good[0], uid=v) for v in odd_ids]
  row = dict(good[0], uid="bad")

  def base(key):  # the row without `key`, without its closing brace
    return json.dumps({k: v for k, v in row.items() if k != key})[:-1]

  bad = [
      (base("x") + ', "x": 1e39}', ["'x'", "float32"]),
      (base("x") + ', "x": NaN}', ["'x'", "finite"]),
      (base("x") + ', "x": true}', ["'x'", "boolean"]),
      (base("click") + ', "click": true}', ["'click'", "boolean"]),
      (base("cat") + ', "cat": false}', ["'cat'", "boolean"]),
      (base("cat") + ', "cat": {"a": 1}}', ["'cat'", "not a categorical value"]),
      (base("cat") + ', "cat": [1, 2]}', ["'cat'", "not a categorical value"]),
      (base("tags") + ', "tags": {"a": 1}}', ["'tags'", "JSON object"]),
      (base("tags") + ', "tags": [["t"]]}', ["'tags'", "not a categorical value"]),
      (base("x") + ', "x": 1' + "0" * 400 + "}", []),  # float() overflows: any reason
      (base("cat") + ', "cat": 1' + "0" * 5000 + "}", ["not valid JSON"]),
      (base("cat") + ', "cat": "\\ud800"}', ["'cat'", "not valid Unicode"]),
      (base("cat") + ', "cat": "' + "c" * BIG + '"}', ["'cat'", "over the limit"]),
      (base("tags") + ', "tags": ["' + "t" * BIG + '"]}', ["'tags'", "over the limit"]),
      # many short values: the list as joined is over the cell limit, as in a CSV cell
      (base("tags") + ', "tags": ' + json.dumps(["tag"] * 3000) + "}",
       ["'tags'", "a list of 3,000 values (11,999 characters joined)", "over the limit"]),
      ("[1, 2]", ["expected a JSON object, got list"]),
      ('"a string"', ["expected a JSON object, got str"]),
      ("[" * 100_000, ["nested too deeply"]),
      ('{"x": 1,', ["not valid JSON"]),
      (base("x") + ', "x": 1, "x": 2, "x": 3}', ["key 'x' 3 times"]),  # not the last
      (base("tags") + ', "tags": [{"a": 1, "a": 2}]}', ["key 'a' 2 times"]),
      (base("x") + ', "x": "\uff11\uff12"}', ["'x'", "ASCII decimal"]),
      (base("x") + ', "x": "1_000"}', ["'x'", "ASCII decimal"]),
  ]
  lines = [json.dumps(g).encode() for g in good]
  lines[0] = b"\xef\xbb\xbf" + lines[0]  # a BOM on the first line
  lines[5:5] = [b.encode() for b, _ in bad] + [b'{"uid": "\xc3\x28"}']
  path = root / "log.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  out = str(root / "out")
  metadata = preprocess.run(PreprocessConfig(
      raw=str(path), output_dir=out, spec_path=spec_path, split_time_field="x",
      split_time_cutoff=1e9, direct_num_workers=1, tfds=False))  # every row in train
  return {"out": out, "metadata": metadata, "dead": _dead(out), "bad": bad,
          "good": good, "odd_ids": odd_ids}


def test_bad_json_values_are_dead_lettered_not_coerced(jsonl_run):
  dead = {d["row"]: d["reason"] for d in jsonl_run["dead"]}
  for row, fragments in jsonl_run["bad"]:
    assert row in dead, row[:80]
    assert dead[row].strip(), row[:80]
    for fragment in fragments:
      assert fragment in dead[row], (row[:80], dead[row])
  assert dead['{"uid": "\\xc3("}'].startswith("not valid utf-8")
  meta = jsonl_run["metadata"]
  assert meta["rows_rejected"] == len(jsonl_run["bad"]) + 1 == len(jsonl_run["dead"])
  # The BOM line is the first good row, written like the others.
  assert meta["rows_written"]["train"] == len(jsonl_run["good"])


def test_any_string_round_trips_through_the_vocabulary(jsonl_run):
  vocab = _vocab(jsonl_run["out"], "uid")
  assert set(vocab) == {f"j{i}" for i in range(4)} | set(jsonl_run["odd_ids"])
  assert len(vocab) == len(set(vocab))
  table = _table(jsonl_run["out"], "uid_count")
  assert set(table) == set(vocab)


# --- Inputs are never deleted -----------------------------------------------------------
def _complete_dir(out):
  """A directory holding a previous run's marker: an error must leave it in place."""
  layout = PreprocessedData(str(out))
  os.makedirs(os.path.dirname(layout.split_prefix("train")), exist_ok=True)
  spec_lib.write_text(layout.metadata_path, "{}")
  return layout


def test_raw_inside_the_output_train_dir_is_an_error_and_survives(tmp_path):
  spec_path = _write_spec(tmp_path)
  out = tmp_path / "data"
  layout = _complete_dir(out)
  raw = os.path.join(os.path.dirname(layout.split_prefix("train")), "raw.csv")
  content = HEADER + "\n1,1,u,c,t\n"
  with open(raw, "w") as f:
    f.write(content)
  with pytest.raises(PreprocessError) as e:
    preprocess.run(PreprocessConfig(raw=raw, output_dir=str(out), spec_path=spec_path,
                                    direct_num_workers=1))
  assert raw in str(e.value) and str(out) in str(e.value)
  with open(raw) as f:
    assert f.read() == content
  assert os.path.exists(layout.metadata_path)  # raised before anything was touched


def test_a_glob_into_the_outputs_is_refused_before_any_file_is_read(tmp_path):
  """A previous run's gzip shards matched by --raw: the overlap is the reason given,
  not an undecodable header, and the shards are left as they were."""
  spec_path = _write_spec(tmp_path)
  out = tmp_path / "data"
  layout = _complete_dir(out)
  shard = layout.split_prefix("train") + "-00000-of-00001" + layout.SHARD_SUFFIX
  with open(shard, "wb") as f:
    f.write(b"\x1f\x8b\x08binary")
  with pytest.raises(PreprocessError, match="points inside the output directory"):
    preprocess.run(PreprocessConfig(raw=os.path.join(os.path.dirname(shard), "*"),
                                    output_dir=str(out), spec_path=spec_path))
  with open(shard, "rb") as f:
    assert f.read() == b"\x1f\x8b\x08binary"


def test_raw_reached_through_a_symlink_into_the_output_is_an_error(tmp_path):
  spec_path = _write_spec(tmp_path)
  out = tmp_path / "data"
  out.mkdir()
  (out / "log.csv").write_text(HEADER + "\n1,1,u,c,t\n")
  os.symlink(out, tmp_path / "alias")
  with pytest.raises(PreprocessError, match="inside the output directory"):
    preprocess.run(PreprocessConfig(raw=str(tmp_path / "alias" / "*.csv"),
                                    output_dir=str(out), spec_path=spec_path))
  assert (out / "log.csv").exists()


def test_movielens_folder_as_the_output_is_an_error(tmp_path):
  for name in ("u.data", "u.user", "u.item"):
    (tmp_path / name).write_text("")
  with pytest.raises(PreprocessError, match=str(tmp_path)):
    preprocess.run(PreprocessConfig(raw=str(tmp_path), output_dir=str(tmp_path),
                                    spec_path="movielens_100k", source="movielens"))
  assert sorted(os.listdir(tmp_path)) == ["u.data", "u.item", "u.user"]


def test_spec_inside_a_cleared_output_dir_is_an_error(tmp_path):
  out = tmp_path / "data"
  layout = _complete_dir(out)
  spec_path = _write_spec(tmp_path)
  inside = os.path.join(layout.vocab_dir, "spec.yaml")
  os.makedirs(layout.vocab_dir)
  os.replace(spec_path, inside)
  (tmp_path / "log.csv").write_text(HEADER + "\n1,1,u,c,t\n")
  with pytest.raises(PreprocessError, match="--spec .* which the job clears"):
    preprocess.run(PreprocessConfig(raw=str(tmp_path / "log.csv"), output_dir=str(out),
                                    spec_path=inside))
  assert os.path.exists(inside) and os.path.exists(layout.metadata_path)


# --- Counters ---------------------------------------------------------------------------
GOOD_COUNTS = {"rows_read": 10, "rows_written_train": 6, "rows_written_eval": 2,
               "rows_rejected": 2, "ali_ccp_common_rows_read": 5,
               "ali_ccp_common_rows_joined": 3, "ali_ccp_common_rows_unused": 1,
               "ali_ccp_common_rows_rejected": 1}


def test_reconcile_returns_the_counts():
  counts = preprocess.reconcile(GOOD_COUNTS)
  assert counts["rows_read"] == 10 and counts["rows_rejected"] == 2
  assert counts["rows_written"] == {"train": 6, "eval": 2}
  assert counts["side_files"]["ali_ccp_common_rows"]["joined"] == 3


@pytest.mark.parametrize("change", [
    {"rows_read": 11}, {"rows_rejected": 1}, {"rows_written_eval": 3},
    {"ali_ccp_common_rows_unused": 0}, {"ali_ccp_common_rows_read": 6},
])
def test_reconcile_raises_on_counts_that_do_not_add_up(change):
  with pytest.raises(preprocess.CountersError, match="do not reconcile"):
    preprocess.reconcile(dict(GOOD_COUNTS, **change))


def test_unreconciled_run_fails_and_leaves_nothing(csv_run, tmp_path, monkeypatch):
  """run() must check the counters (one row too many read), and a failure after the
  pipeline wrote its files removes them all: no metadata, no staging, no shards."""
  real = preprocess.job_counters

  def one_more_read(result):
    counters = real(result)
    counters["rows_read"] += 1
    return counters
  monkeypatch.setattr(preprocess, "job_counters", one_more_read)
  out = str(tmp_path / "out")
  with pytest.raises(preprocess.CountersError, match="do not reconcile"):
    preprocess.run(PreprocessConfig(
        raw=str(csv_run["raw"] / "log.csv"), output_dir=out,
        spec_path=PreprocessedData(csv_run["out"]).spec_path, direct_num_workers=1,
        tfds=False))
  with pytest.raises(IncompleteDataError):
    PreprocessedData(out).metadata
  left = [os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out)
          for f in fs]
  assert left == [], left


def test_full_disk_in_a_worker_is_an_os_error_on_the_data_dir(csv_run, tmp_path,
                                                              monkeypatch):
  """A Beam worker's full disk reaches the driver as RuntimeError("OSError: [Errno 28]
  ... [while running 'Writetrain/...']"): it is raised as the OSError it was, on the
  data directory (the CLI prints it in one line), and the run leaves nothing."""
  def disk_full(self, file_handle, value):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(tfrecord_sink._BatchTFRecordSink, "write_record", disk_full)
  out = str(tmp_path / "out")
  with pytest.raises(OSError) as e:
    preprocess.run(PreprocessConfig(
        raw=str(csv_run["raw"] / "log.csv"), output_dir=out,
        spec_path=PreprocessedData(csv_run["out"]).spec_path, direct_num_workers=1,
        tfds=False))
  assert (e.value.errno, e.value.filename) == (errno.ENOSPC, out)
  assert faults.describe(e.value) == (
      f"{out}: no space left on the device; free some space or write elsewhere")
  assert os.listdir(out) == []  # no shard, no staging, no marker, no lock
  assert preprocess.worker_os_error(RuntimeError("ValueError: bad [while running 'x']"),
                                    out) is None  # only storage faults


def test_failure_while_publishing_removes_the_published_outputs(csv_run, tmp_path,
                                                                 monkeypatch):
  """A full disk when the marker is written: everything already moved is removed."""
  def disk_full(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(PreprocessedData, "write_metadata", disk_full)
  out = str(tmp_path / "out")
  with pytest.raises(OSError, match="No space left"):
    preprocess.run(PreprocessConfig(
        raw=str(csv_run["raw"] / "log.csv"), output_dir=out,
        spec_path=PreprocessedData(csv_run["out"]).spec_path, direct_num_workers=1,
        tfds=False))
  layout = PreprocessedData(out)
  assert not glob.glob(layout.split_pattern("train"))
  assert not os.path.exists(layout.vocab_dir) and not os.path.exists(layout.stats_path)
  assert not os.path.exists(layout.spec_path)
  assert _leftovers(out) == []
  with pytest.raises(IncompleteDataError):
    layout.metadata


def test_a_job_that_writes_no_row_fails_with_the_reasons_and_leaves_nothing(tmp_path):
  spec_path = _write_spec(tmp_path)
  raw = tmp_path / "all_bad.csv"
  raw.write_bytes(b"\n".join([HEADER.encode()] + [b"nan,1,u,c0,t1"] * 3
                             + [b"1,1,few"]) + b"\n")
  out = str(tmp_path / "out")
  with pytest.raises(PreprocessError) as e:
    preprocess.run(PreprocessConfig(raw=str(raw), output_dir=out, spec_path=spec_path,
                                    direct_num_workers=1, tfds=False))
  message = str(e.value)
  assert message.startswith("no row written: all 4 rows read were rejected; "
                            "commonest reasons: "), message
  assert "(3 rows)" in message and "(1 rows)" in message and "\n" not in message
  with pytest.raises(IncompleteDataError):
    PreprocessedData(out).metadata
  assert raw.exists()  # the input stays


def test_the_cli_refuses_a_split_that_leaves_no_training_row(tmp_path):
  import subprocess
  import sys
  spec_path = _write_spec(tmp_path)
  raw = tmp_path / "log.csv"
  raw.write_text("\n".join([HEADER] + [f"{i}.5,{i % 2},u{i},c0,t1" for i in range(8)])
                 + "\n")
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "preprocess", f"--raw={raw}",
       f"--spec={spec_path}", f"--data_dir={tmp_path / 'out'}", "--split_time_field=x",
       "--split_time_cutoff=0", "--direct_num_workers=1", "--notfds"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = [l for l in proc.stderr.splitlines() if l.strip()]
  assert err[-1] == ("hmdn preprocess: error: no train row: --split_time_field=x "
                     "--split_time_cutoff=0.0 put all 8 written rows in the eval split; "
                     "choose a split that leaves rows in both"), err
  with pytest.raises(IncompleteDataError):
    PreprocessedData(str(tmp_path / "out")).metadata
