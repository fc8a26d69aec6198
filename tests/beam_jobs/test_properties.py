"""Property-based tests (hypothesis) of the raw readers: for any input, every line is
written exactly once or dead-lettered with a reason, the counters reconcile, and no
exception escapes.

The line-parsing layer (`LineParserFn` subclasses: bytes in, one record or one dead
letter out) is tested on many generated lines; the whole Beam job (`preprocess.run`)
on a few generated files, against that layer as the oracle.
"""
import csv
import glob
import io
import json
import math
import os
import shutil
import tempfile

import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hmdn.beam_jobs import ali_ccp_format as A
from hmdn.beam_jobs import config as C
from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.transforms.batches import DEAD_LETTER
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.beam_jobs.sources import ali_ccp_raw, base, generic
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import SPLITS, PreprocessedData

SPEC = spec_lib.spec_from_dict({"name": "props", "features": [
    {"name": "x", "kind": "numeric", "default": 0},
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "uid", "kind": "categorical"},
    {"name": "cat", "kind": "categorical", "default": "none"},
    {"name": "tags", "kind": "multi_categorical"},
]})
HEADER = [f.name for f in SPEC.features]
BOM = b"\xef\xbb\xbf"
FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BEAM = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# --- Strategies -----------------------------------------------------------------------
# Cells: any Unicode (no line breaks: the reader splits lines first), separators,
# quotes, empty, huge, numbers good and bad, booleans, JSON-looking text.
text = st.text(st.characters(blacklist_characters="\n\r"), max_size=30)
special = st.sampled_from([
    "", " ", ",", '"', '""', '"a,b"', "|", "||", "\t", "\x00", "\ufeff", "nan", "NaN",
    "inf", "-inf", "1e39", "-1e39", "3.4e38", "1e-50", "true", "false", "True", "null",
    '{"a": 1}', "[1, 2]", "0", "1", "2", "-0", "0x10", "1_000", "é", "😀", "\u2028",
    "c" * (spec_lib.MAX_CELL_CHARS + 1), "d" * 140_000])
cell = st.one_of(text, special)
line_of_cells = st.lists(cell, max_size=8).map(lambda cells: ",".join(cells))


def _with_noise(line: bytes, draw) -> bytes:
  """A BOM in front, or an undecodable byte somewhere, sometimes."""
  if draw(st.booleans()):
    line = BOM + line
  if draw(st.integers(0, 4)) == 0:
    at = draw(st.integers(0, len(line)))
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
    line = line[:at] + bad + line[at:]
  return line


@st.composite
def raw_lines(draw, structured):
  """Any line a file can hand the reader: random bytes, or cells joined (or a JSON
  value serialized), with noise."""
  if draw(st.integers(0, 3)) == 0:
    return draw(st.binary(max_size=60).filter(
        lambda b: b"\n" not in b and b"\r" not in b))
  return _with_noise(draw(structured).encode("utf-8", "surrogatepass"), draw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | cell,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8)
json_objects = st.dictionaries(st.sampled_from(HEADER + ["other"]), json_values,
                               max_size=6)
json_lines = st.one_of(json_objects, json_values).map(json.dumps)


def _good_text(draw, forbid=""):
  value = draw(st.text(st.characters(blacklist_characters="\n\r" + forbid,
                                     blacklist_categories=("Cs",)), min_size=1,
                       max_size=20))
  assume(value.strip() != "" and not value.startswith("\ufeff"))
  return value


@st.composite
def good_rows(draw):
  """A valid row: {field: the value it must be written as}."""
  return {
      "x": float(draw(st.floats(allow_nan=False, allow_infinity=False, width=32))),
      "click": float(draw(st.sampled_from([0, 1]))),
      "uid": _good_text(draw),
      "cat": _good_text(draw),
      "tags": [_good_text(draw, forbid="|") for _ in range(draw(st.integers(1, 3)))],
  }


def _csv_line(row) -> bytes:
  buf = io.StringIO()
  cells = [repr(row["x"]), str(int(row["click"])), row["uid"], row["cat"],
           "|".join(row["tags"])]
  csv.writer(buf, lineterminator="").writerow(cells)
  return buf.getvalue().encode("utf-8")


def _json_line(row) -> bytes:
  return json.dumps(row).encode("utf-8")


# --- The one-line oracle --------------------------------------------------------------
def _one(fn, path, line):
  """The parser's single output for a line: ("dead", {source, row, reason}) or
  ("record", value); anything else fails."""
  outputs = list(fn.process((path, line)))
  assert len(outputs) == 1, outputs
  out = outputs[0]
  if hasattr(out, "tag"):
    assert out.tag == DEAD_LETTER
    dead = out.value
    assert isinstance(dead["reason"], str) and dead["reason"].strip()
    assert dead["source"] == path and isinstance(dead["row"], str)
    json.dumps(dead)  # the dead letter is writable
    return "dead", dead
  return "record", out


def _check_record(record):
  """What any written record must satisfy: typed, finite float32, UTF-8, in limits."""
  assert set(record) == set(HEADER)
  for f in SPEC.features:
    v = record[f.name]
    if f.kind == spec_lib.NUMERIC:
      assert type(v) is float and math.isfinite(v) and abs(v) <= spec_lib.FLOAT32_MAX
    values = v if f.kind == spec_lib.MULTI_CATEGORICAL else (
        [v] if f.kind == spec_lib.CATEGORICAL else [])
    for s in values:
      assert type(s) is str and 0 < len(s) <= spec_lib.MAX_CELL_CHARS
      s.encode("utf-8")
  assert record["click"] in (0.0, 1.0)


def _csv_fn():
  return generic.ParseRowFn(SPEC, C.CSV, {"*": HEADER}, ",", "", 0.3)


def _json_fn():
  return generic.ParseRowFn(SPEC, C.JSONL, {}, ",", "", 0.3)


# --- Line layer: generic CSV and JSONL ------------------------------------------------
@FAST
@given(st.lists(raw_lines(line_of_cells), min_size=1, max_size=5))
def test_csv_any_line_is_one_record_or_one_dead_letter(lines):
  fn = _csv_fn()
  for line in lines:
    kind, out = _one(fn, "f.csv", line)
    if kind == "record":
      split, record = out
      assert split in SPLITS
      _check_record(record)


@FAST
@given(st.lists(raw_lines(json_lines), min_size=1, max_size=5))
def test_jsonl_any_line_is_one_record_or_one_dead_letter(lines):
  fn = _json_fn()
  for line in lines:
    kind, out = _one(fn, "f.jsonl", line)
    if kind == "record":
      _check_record(out[1])


@FAST
@given(good_rows(), st.booleans(), st.sampled_from([_csv_line, _json_line]))
def test_a_valid_row_is_written_with_exactly_its_values(row, bom, to_line):
  """Nothing is coerced or truncated: quotes, separators, Unicode all survive."""
  fn = _csv_fn() if to_line is _csv_line else _json_fn()
  kind, out = _one(fn, "f", (BOM if bom else b"") + to_line(row))
  assert kind == "record", out
  assert out[1] == row


BAD_CELLS = {"x": ["nan", "inf", "-inf", "1e39", "-3.5e38", "true", "abc", "1,5",
                   "c" * (spec_lib.MAX_CELL_CHARS + 1)],
             "click": ["", " ", "2", "0.5", "true", "nan"],
             "uid": ["", "  ", "u" * (spec_lib.MAX_CELL_CHARS + 1)],
             "tags": ["", " "]}


@FAST
@given(good_rows(), st.sampled_from(sorted(BAD_CELLS)), st.data())
def test_a_row_with_one_bad_cell_is_dead_lettered_naming_the_field(row, field, data):
  bad = data.draw(st.sampled_from(BAD_CELLS[field]))
  cells = [repr(row["x"]), str(int(row["click"])), row["uid"], row["cat"],
           "|".join(row["tags"])]
  cells[HEADER.index(field)] = bad
  buf = io.StringIO()
  csv.writer(buf, lineterminator="").writerow(cells)
  kind, out = _one(_csv_fn(), "f.csv", buf.getvalue().encode())
  assert kind == "dead" and f"'{field}'" in out["reason"], out


@FAST
@given(good_rows(), st.sampled_from([-2, -1, 1, 2]), text)
def test_a_row_with_too_many_or_too_few_cells_is_dead_lettered(row, change, extra):
  cells = [repr(row["x"]), str(int(row["click"])), row["uid"], row["cat"],
           "|".join(row["tags"])]
  cells = cells[:change] if change < 0 else cells + [extra] * change
  buf = io.StringIO()
  csv.writer(buf, lineterminator="").writerow(cells)
  kind, out = _one(_csv_fn(), "f.csv", buf.getvalue().encode())
  assert kind == "dead", out
  assert f"expected {len(HEADER)} columns" in out["reason"], out
  assert f"got {len(cells)}" in out["reason"], out


@FAST
@given(good_rows(), st.sampled_from(["x", "click", "uid", "cat", "tags"]),
       st.one_of(st.booleans(), st.dictionaries(text, st.integers(), min_size=1,
                                                 max_size=2),
                 st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=2)))
def test_json_booleans_and_nesting_are_never_coerced(row, field, value):
  kind, out = _one(_json_fn(), "f.jsonl", _json_line(dict(row, **{field: value})))
  assert kind == "dead" and f"'{field}'" in out["reason"], out


# --- Line layer: Ali-CCP raw ----------------------------------------------------------
ali_text = st.text(st.sampled_from(list("\x01\x02\x03,.0123abé😀 \t") + ["\ufeff"]),
                   max_size=40)


@FAST
@given(st.lists(raw_lines(ali_text), min_size=1, max_size=5))
def test_ali_ccp_any_line_is_one_parse_or_one_dead_letter(lines):
  skeleton, common = ali_ccp_raw._ParseSkeletonFn(), ali_ccp_raw._ParseCommonFn()
  for line in lines:
    _one(skeleton, "sample_skeleton_p.csv", line)
    _one(common, "common_features_p.csv", line)


ids = st.text(st.characters(blacklist_characters="\x01\x02\x03,\n\r",
                            blacklist_categories=("Cs",)), min_size=1, max_size=12)
field_ids = st.one_of(ids, st.sampled_from(A.OWN_COLUMNS + A.USER_FIELDS))
entries = st.lists(st.tuples(field_ids, ids, st.floats(-1e6, 1e6, allow_nan=False)),
                   max_size=6)


@FAST
@given(ids, st.sampled_from([0, 1]), ids, entries)
def test_ali_ccp_valid_skeleton_lines_parse_to_their_entries(sample_id, click, index,
                                                             items):
  assume(not sample_id.startswith("\ufeff"))
  line = A.skeleton_line(sample_id, click, 0, index, items).encode("utf-8")
  kind, out = _one(ali_ccp_raw._ParseSkeletonFn(), "sample_skeleton_p.csv", line)
  expected = {}
  for field, fid, _ in items:
    expected.setdefault(field, []).append(fid)
  if set(expected) & set(A.OWN_COLUMNS):
    assert kind == "dead" and "skeleton's own columns" in out["reason"], out
    return
  assert kind == "record", out
  got_id, (_, _, key, cells) = out
  assert got_id == sample_id and key == f"p/{index}"
  assert {k: v for k, v in cells.items() if k not in A.OWN_COLUMNS} == expected


# --- The whole Beam job on generated files --------------------------------------------
def _run(raw_glob, out, spec_path, source=C.GENERIC):
  return preprocess.run(PreprocessConfig(
      raw=raw_glob, output_dir=out, spec_path=spec_path, source=source,
      eval_fraction=0.3, direct_num_workers=1, tfds=False))


def _written(out, field):
  values = []
  for split in SPLITS:
    files = sorted(glob.glob(PreprocessedData(out).split_pattern(split)))
    for s in tf.data.TFRecordDataset(files, compression_type="GZIP"):
      ex = tf.train.Example.FromString(s.numpy())
      values.append(ex.features.feature[field].bytes_list.value[0].decode("utf-8"))
  return values


def _dead_rows(out):
  rows = []
  for path in glob.glob(f"{PreprocessedData(out).dead_letter_prefix}-*.jsonl"):
    with open(path, encoding="utf-8") as f:
      rows.extend(json.loads(line) for line in f if line.strip())
  assert all(r["reason"].strip() for r in rows)
  return sorted(r["row"] for r in rows)


def _check_job_against_lines(meta, out, fn, path, lines, n_header=0):
  """The job's output equals the line layer's verdict on each non-blank line."""
  expected_ids, expected_dead, read = [], [], 0
  for line in lines[n_header:]:
    if base.is_blank(line):
      continue
    read += 1
    kind, value = _one(fn, path, line)
    if kind == "record":
      expected_ids.append(value[1]["uid"])
    else:
      expected_dead.append(value["row"])
  written = {f"rows_written_{s}": n for s, n in meta["rows_written"].items()}
  preprocess.reconcile({"rows_read": meta["rows_read"],
                        "rows_rejected": meta["rows_rejected"], **written})
  assert meta["rows_read"] == read
  assert meta["rows_rejected"] == len(expected_dead)
  assert sorted(_written(out, "uid")) == sorted(expected_ids)
  assert _dead_rows(out) == sorted(expected_dead)


class _Files:
  def __enter__(self):
    self.root = tempfile.mkdtemp(prefix="hmdn_props_")
    with open(os.path.join(self.root, "spec.yaml"), "w") as f:
      f.write(json.dumps(SPEC.to_dict()))
    self.spec_path = os.path.join(self.root, "spec.yaml")
    return self

  def __exit__(self, *exc):
    shutil.rmtree(self.root, ignore_errors=True)


def _mixed(draw, to_line, junk):
  """Valid rows (unique ids), junk lines and blank lines, in a drawn order."""
  rows = draw(st.lists(good_rows(), min_size=1, max_size=6))
  lines = [to_line(dict(r, uid=f"r{i}_{r['uid']}")) for i, r in enumerate(rows)]
  lines += draw(st.lists(raw_lines(junk), max_size=6)) + [b"", b"  "]
  return draw(st.permutations(lines))


@BEAM
@given(st.data())
def test_csv_job_writes_or_dead_letters_every_line_once(data):
  lines = _mixed(data.draw, _csv_line, line_of_cells)
  header = (BOM if data.draw(st.booleans()) else b"") + ",".join(HEADER).encode()
  with _Files() as files:
    path = os.path.join(files.root, "log.csv")
    with open(path, "wb") as f:
      f.write(b"\n".join([header] + list(lines)) + b"\n")
    out = os.path.join(files.root, "out")
    meta = _run(path, out, files.spec_path)
    _check_job_against_lines(meta, out, _csv_fn(), path, [header] + list(lines), 1)


@BEAM
@given(st.data())
def test_jsonl_job_writes_or_dead_letters_every_line_once(data):
  lines = _mixed(data.draw, _json_line, json_lines)
  with _Files() as files:
    path = os.path.join(files.root, "log.jsonl")
    with open(path, "wb") as f:
      f.write(b"\n".join(lines) + b"\n")
    out = os.path.join(files.root, "out")
    meta = _run(path, out, files.spec_path)
    _check_job_against_lines(meta, out, _json_fn(), path, list(lines))


@BEAM
@given(st.integers(0, 10_000), st.lists(raw_lines(ali_text), max_size=5),
       st.lists(raw_lines(ali_text), max_size=5))
def test_ali_ccp_job_joins_every_valid_impression_once(seed, junk_skeleton, junk_common):
  with _Files() as files:
    raw = os.path.join(files.root, "raw")
    A.generate(raw, impressions=40, users=8, items=20, parts=("p",), seed=seed)
    spec = spec_lib.load_spec("ali_ccp_raw").to_dict()
    spec["features"].insert(2, {"name": "sample_id", "kind": "categorical",
                                "role": "passthrough"})
    spec_path = os.path.join(files.root, "ali.yaml")
    with open(spec_path, "w") as f:
      f.write(json.dumps(spec))
    counts = {}
    for kind, junk, mark in (("sample_skeleton", junk_skeleton, b"j"),
                             ("common_features", junk_common, b"k")):
      path = os.path.join(raw, f"{kind}_p.csv")
      with open(path, "rb") as f:
        good = f.read().splitlines()
      # Junk lines start with a mark no generated id has: never a duplicate id.
      lines = good + [mark + j for j in junk] + [b""]
      with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
      counts[kind] = (good, sum(not base.is_blank(x) for x in lines))
    out = os.path.join(files.root, "out")
    meta = _run(f"{raw}/*.csv", out, spec_path, source=C.ALI_CCP_RAW)
    written = meta["rows_written"]
    assert meta["rows_read"] == counts["sample_skeleton"][1]
    assert meta["rows_read"] == written["train"] + written["eval"] + meta["rows_rejected"]
    common = meta["side_files"]["ali_ccp_common_rows"]
    assert common["read"] == counts["common_features"][1]
    assert common["read"] == common["joined"] + common["unused"] + common["rejected"]
    good_ids = [line.split(b",", 1)[0].decode() for line in counts["sample_skeleton"][0]]
    assert sorted(_written(out, "sample_id")) == sorted(good_ids)
    assert len(_dead_rows(out)) == meta["rows_rejected"] + common["rejected"]

