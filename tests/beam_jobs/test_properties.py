"""Property-based tests (hypothesis) of the raw readers: for any input, every line is
written exactly once or dead-lettered with a reason, the counters reconcile, and no
exception escapes.

The line-parsing layer (`LineParserFn` subclasses: bytes in, one record or one dead
letter out; a CSV record may hold quoted line breaks) is tested on many generated
lines; the whole Beam job (`preprocess.run`) on a few generated files, against that
layer as the oracle. The strategies are in `line_strategies`.
"""
import glob
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
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.beam_jobs.sources import ali_ccp_raw, base, csv_records
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import SPLITS, PreprocessedData
from line_strategies import (BOM, HEADER, SPEC, csv_line, csv_parser, csv_record,  # noqa
                             good_rows, json_line, json_lines, json_parser, line_of_cells,
                             one, raw_lines, row_cells, text)

FAST = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BEAM = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


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


# --- Line layer: generic CSV and JSONL ------------------------------------------------
@FAST
@given(st.lists(raw_lines(line_of_cells), min_size=1, max_size=5))
def test_csv_any_line_is_one_record_or_one_dead_letter(lines):
  fn = csv_parser()
  for line in lines:
    kind, out = one(fn, "f.csv", line)
    if kind == "record":
      split, record = out
      assert split in SPLITS
      _check_record(record)


@FAST
@given(st.lists(raw_lines(json_lines), min_size=1, max_size=5))
def test_jsonl_any_line_is_one_record_or_one_dead_letter(lines):
  fn = json_parser()
  for line in lines:
    kind, out = one(fn, "f.jsonl", line)
    if kind == "record":
      _check_record(out[1])


@FAST
@given(good_rows(), st.booleans(), st.sampled_from([csv_line, json_line]))
def test_a_valid_row_is_written_with_exactly_its_values(row, bom, to_line):
  """Nothing is coerced or truncated: quotes, separators, Unicode all survive."""
  fn = csv_parser() if to_line is csv_line else json_parser()
  kind, out = one(fn, "f", (BOM if bom else b"") + to_line(row))
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
  cells = row_cells(row)
  cells[HEADER.index(field)] = bad
  kind, out = one(csv_parser(), "f.csv", csv_record(cells))
  assert kind == "dead" and f"'{field}'" in out["reason"], out


@FAST
@given(good_rows(), st.sampled_from([-2, -1, 1, 2]), text)
def test_a_row_with_too_many_or_too_few_cells_is_dead_lettered(row, change, extra):
  cells = row_cells(row)
  cells = cells[:change] if change < 0 else cells + [extra] * change
  kind, out = one(csv_parser(), "f.csv", csv_record(cells))
  assert kind == "dead", out
  assert f"expected {len(HEADER)} columns" in out["reason"], out
  assert f"got {len(cells)}" in out["reason"], out


@FAST
@given(good_rows(), st.sampled_from(["x", "click", "uid", "cat", "tags"]),
       st.one_of(st.booleans(), st.dictionaries(text, st.integers(), min_size=1,
                                                 max_size=2),
                 st.lists(st.lists(st.integers(), max_size=2), min_size=1, max_size=2)))
def test_json_booleans_and_nesting_are_never_coerced(row, field, value):
  kind, out = one(json_parser(), "f.jsonl", json_line(dict(row, **{field: value})))
  assert kind == "dead" and f"'{field}'" in out["reason"], out


# --- Line layer: Ali-CCP raw ----------------------------------------------------------
ali_text = st.text(st.sampled_from(list("\x01\x02\x03,.0123abé😀 \t") + ["\ufeff"]),
                   max_size=40)


@FAST
@given(st.lists(raw_lines(ali_text), min_size=1, max_size=5))
def test_ali_ccp_any_line_is_one_parse_or_one_dead_letter(lines):
  skeleton, common = ali_ccp_raw._ParseSkeletonFn(), ali_ccp_raw._ParseCommonFn()
  for line in lines:
    one(skeleton, "sample_skeleton_p.csv", line)
    one(common, "common_features_p.csv", line)


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
  kind, out = one(ali_ccp_raw._ParseSkeletonFn(), "sample_skeleton_p.csv", line)
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


def _check_job_against_lines(meta, out, fn, path, lines, n_header=0, csv_file=False):
  """The job's output equals the line layer's verdict on each non-blank line (of a
  CSV file: each record, its quoted line breaks joined)."""
  expected_ids, expected_dead, read = [], [], 0
  lines = lines[n_header:]
  if csv_file:
    joiner = csv_records.RecordJoiner(",")
    lines = joiner.feed(b"\n".join(lines).split(b"\n")) + joiner.finish()
  for line in lines:
    if base.is_blank(line):
      continue
    read += 1
    kind, value = one(fn, path, line)
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
  lines = _mixed(data.draw, csv_line, line_of_cells)
  header = (BOM if data.draw(st.booleans()) else b"") + ",".join(HEADER).encode()
  with _Files() as files:
    path = os.path.join(files.root, "log.csv")
    with open(path, "wb") as f:
      f.write(b"\n".join([header] + list(lines)) + b"\n")
    out = os.path.join(files.root, "out")
    meta = _run(path, out, files.spec_path)
    _check_job_against_lines(meta, out, csv_parser(), path, [header] + list(lines), 1,
                             csv_file=True)


@BEAM
@given(st.data())
def test_jsonl_job_writes_or_dead_letters_every_line_once(data):
  lines = _mixed(data.draw, json_line, json_lines)
  with _Files() as files:
    path = os.path.join(files.root, "log.jsonl")
    with open(path, "wb") as f:
      f.write(b"\n".join(lines) + b"\n")
    out = os.path.join(files.root, "out")
    meta = _run(path, out, files.spec_path)
    _check_job_against_lines(meta, out, json_parser(), path, list(lines))


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

