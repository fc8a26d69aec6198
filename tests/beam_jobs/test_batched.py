"""The batched hot path gives each line the verdict of the per-row path.

`ParseRowFn.parse_batch` (vectorised decode / split / typing) against
`ParseRowFn.process` (one line at a time, the oracle) on generated batches; the byte
range reader against Beam's own text source; the wire-format tf.Example encoder
against `tf.train.Example`; the TFRecord framing against TensorFlow's reader; the
combiners' per-batch work against per-row counts; progress lines and quiet logs.
"""
import collections
import csv
import io
import json
import logging
import os
import random

import numpy as np
import pytest
import tensorflow as tf
from apache_beam import coders
from apache_beam.io import textio
from apache_beam.io.filesystem import CompressionTypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmdn.beam_jobs import config as C
from hmdn.beam_jobs import local_runner, preprocess
from hmdn.beam_jobs.transforms.batches import batch_rows, rows_to_batches
from hmdn.beam_jobs.transforms.examples import ExampleEncoder
from hmdn.beam_jobs.transforms.progress import Progress
from hmdn.beam_jobs.transforms.statistics import (_BatchMomentsFn, _MergeCellsFn,
                                                  column_moments, distribution_counts)
from hmdn.beam_jobs.transforms.tfrecord_sink import tfrecord_frames
from hmdn.beam_jobs.transforms.time_split import split_of
from hmdn.beam_jobs.transforms.vocabularies import _MergeCountsFn, _column_values, _values
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.beam_jobs.sources import base, csv_records, generic
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData
import line_strategies as L  # the raw-line strategies and the one-record oracle

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def _per_row(fn, path, lines):
  records, dead = [], []
  for line in lines:
    kind, out = L.one(fn, path, line)
    (records if kind == "record" else dead).append(out)
  return records, dead


def _by_batch(fn, path, lines):
  batches, dead = fn.parse_batch(path, lines)
  records = [sr for b in batches for sr in batch_rows(b)]
  return records, [d.value for d in dead]


def _canon(records):
  return sorted(json.dumps(r, sort_keys=True, default=str) for r in records)


def _same_verdicts(fn, path, lines):
  lines = [l for l in lines if not base.is_blank(l)]
  rows, dead = _per_row(fn, path, lines)
  b_rows, b_dead = _by_batch(fn, path, lines)
  assert _canon(b_rows) == _canon(rows)
  assert _canon(b_dead) == _canon(dead)  # same rows, same reasons
  assert len(b_rows) + len(b_dead) == len(lines)


good_csv = L.good_rows().map(L.csv_line)
good_json = L.good_rows().map(L.json_line)


@FAST
@given(st.lists(st.one_of(good_csv, good_csv, L.raw_lines(L.line_of_cells)),
                min_size=1, max_size=12))
def test_csv_batch_equals_row_by_row(lines):
  _same_verdicts(L.csv_parser(), "f.csv", lines)


@FAST
@given(st.lists(st.one_of(good_json, good_json, L.raw_lines(L.json_lines)),
                min_size=1, max_size=12))
def test_jsonl_batch_equals_row_by_row(lines):
  _same_verdicts(L.json_parser(), "f.jsonl", lines)


def test_batch_split_key_and_missing_columns_equal_row_by_row():
  spec = L.SPEC
  header = ["uid", "click", "tags", "x"]  # no "cat" column: its default, counted
  fn = generic.ParseRowFn(spec, C.CSV, {"f.csv": header}, ",", "uid", 0.5)
  lines = [f"u{i % 9},{i % 2},a|b,{i * 0.5}".encode() for i in range(200)]
  lines += [b"u1,2,a,1", b"u2,1,a,", b'"u3",1,a,1', b"u4,1,a,nan", b"u5,1"]
  _same_verdicts(fn, "f.csv", lines)
  batches, _ = fn.parse_batch("f.csv", lines)
  for split, columns in batches:  # the split follows the key, as split_of says
    assert all(split_of(u, 0.5) == split for u in columns["uid"])
    assert set(columns["cat"]) == {"none"}


# --- Reading ----------------------------------------------------------------------------
def _beam_lines(path, skip):
  source = textio._TextSource(path, 0, CompressionTypes.AUTO, True,
                              coders.BytesCoder(), skip_header_lines=skip)
  return [l for l in source.read(source.get_range_tracker(None, None))
          if not base.is_blank(l)]


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.sampled_from([b"a", b"bc,d", b"", b" ", b"\r", b"x\ry", b"\xef\xbb\xbf",
                                 b"long" * 50, b"\xff"]), max_size=40),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.integers(0, 1),
       st.integers(1, 97))
def test_ranges_read_every_line_once_as_beam_does(tmp_path_factory, pieces, newline,
                                                  final_newline, skip, step):
  path = str(tmp_path_factory.mktemp("ranges") / "f.csv")
  data = newline.join(pieces) + (newline if final_newline and pieces else b"")
  with open(path, "wb") as f:
    f.write(data)
  old = (base.MIN_RANGE_BYTES, base.MAX_RANGE_BYTES)
  base.MIN_RANGE_BYTES = base.MAX_RANGE_BYTES = step  # many small ranges
  try:
    ranges = base.byte_ranges([path], skip)
  finally:
    base.MIN_RANGE_BYTES, base.MAX_RANGE_BYTES = old
  fn = base.ReadRangeFn(batch_rows=7)
  got = [l for r in ranges for p, batch in fn.process(r) for l in batch]
  assert got == _beam_lines(path, skip)


csv_cells_nl = st.text(st.sampled_from(list('ab,"\n\r é')), max_size=6)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.lists(csv_cells_nl, min_size=1, max_size=3), max_size=25),
       st.sampled_from(["\n", "\r\n"]), st.integers(1, 97), st.integers(1, 5),
       st.integers(1, 64))
def test_csv_ranges_read_every_record_once_as_the_csv_module_does(
    tmp_path_factory, rows, newline, step, batch, scan):
  """RFC 4180: a quoted field's line breaks stay in its record, across the batches;
  each record is one element (rows_read counts records), in file order."""
  if newline == "\n":  # a bare "\r" is then written unquoted: no line end for Beam
    rows = [[c.replace("\r", "") for c in r] for r in rows]
  buf = io.StringIO(newline="")
  csv.writer(buf, lineterminator=newline).writerows([["h1", "h2"]] + rows)
  data = buf.getvalue().encode("utf-8")
  path = str(tmp_path_factory.mktemp("csv_ranges") / "f.csv")
  with open(path, "wb") as f:
    f.write(data)
  old = (base.MIN_RANGE_BYTES, base.MAX_RANGE_BYTES, csv_records.SCAN_CHUNK_BYTES)
  base.MIN_RANGE_BYTES = base.MAX_RANGE_BYTES = step  # many small ranges
  csv_records.SCAN_CHUNK_BYTES = scan  # the scan's blocks with and without quotes
  try:
    ranges = base.csv_record_ranges(base.byte_ranges([path], 1), ",")
  finally:
    base.MIN_RANGE_BYTES, base.MAX_RANGE_BYTES, csv_records.SCAN_CHUNK_BYTES = old
  assert [r[1] for r in ranges[1:]] == [r[2] for r in ranges[:-1]]  # contiguous
  assert ranges[0][1] == 0 and ranges[-1][2] == len(data)
  assert all(data[r[1] - 1:r[1]] == b"\n" for r in ranges[1:])  # at line starts
  if b'"' not in data:  # every line starts a record: a range at each line a cut hits
    cuts = {data.find(b"\n", c - 1) + 1 for c in range(step, len(data), step)}
    assert len(ranges) == len(cuts - {0, len(data)}) + 1
  fn = base.ReadRangeFn(batch_rows=batch, csv_delimiter=",")
  got = [generic.csv_cells(r.decode("utf-8"), ",")
         for r in ranges for p, records in fn.process(r) for r in records]
  expected = [r for r in csv.reader(io.StringIO(data.decode("utf-8"), newline=""),
                                    strict=True)][1:]
  blank = [[]] + [[" " * n] for n in range(1, 20)]  # blank lines: skipped, as Beam does
  assert got == [r for r in expected if r not in blank]


def test_csv_records_left_open_or_broken_cost_one_record():
  """A quote that never closes runs to the end of the file (one dead letter there); a
  quoted field followed by text ends its record at its line, as the csv module's error
  does, so the next line is a record of its own."""
  joiner = csv_records.RecordJoiner(",")
  lines = [b'a,"x', b"y", b'z",b\r', b'"p"q,"r', b"s,t", b'u,"open', b"v"]
  assert joiner.feed(lines[:2]) == []
  assert joiner.feed(lines[2:]) == [b'a,"x\ny\nz",b', b'"p"q,"r', b"s,t"]
  assert joiner.finish() == [b'u,"open\nv']
  assert joiner.finish() == []
  old, csv_records.MAX_RECORD_BYTES = csv_records.MAX_RECORD_BYTES, 12
  try:  # a record still open past the limit ends there: the next line is a record
    assert joiner.feed([b'a,"x', b"y" * 9, b"z", b"w"]) == [b'a,"x\n' + b"y" * 9, b"z",
                                                            b"w"]
  finally:
    csv_records.MAX_RECORD_BYTES = old
  for record, message in [(b'u,"open\nv', "unexpected end of data"),
                          (b'"p"q,"r', "',' expected after '\"'")]:
    with pytest.raises(spec_lib.SpecError, match=message):
      generic.csv_cells(record.decode(), ",")


def test_gzip_file_is_one_range_read_whole(tmp_path):
  import gzip
  path = str(tmp_path / "f.csv.gz")
  lines = [b"h"] + [f"row{i}".encode() for i in range(5000)]
  with gzip.open(path, "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  ranges = base.byte_ranges([path], 1)
  assert len(ranges) == 1
  got = [l for p, batch in base.ReadRangeFn().process(ranges[0]) for l in batch]
  assert got == lines[1:]


# --- Serialization ----------------------------------------------------------------------
ENC_SPEC = spec_lib.spec_from_dict({"name": "enc", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "x", "kind": "numeric"},
    {"name": "a_long_field_name_" + "n" * 100, "kind": "categorical"},
    {"name": "tags", "kind": "multi_categorical"},
]})
LONG = ENC_SPEC.features[2].name


def _reference(spec, record):
  feature = {}
  for f in spec.features:
    v = record[f.name]
    if f.kind == spec_lib.NUMERIC:
      feature[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
    else:
      feature[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[s.encode("utf-8") for s in (v if isinstance(v, list) else [v])]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


strings = (st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
           | st.integers(0, 20_000).map(lambda n: "é" * (n % 90) + "z" * n))  # varints


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.fixed_dictionaries({
    "click": st.sampled_from([0.0, 1.0]),
    "x": st.floats(allow_nan=False, allow_infinity=False, width=32),
    LONG: strings, "tags": st.lists(strings, max_size=4)}), min_size=1, max_size=6))
def test_example_encoder_equals_tf_train_example(records):
  columns = {k: [r[k] for r in records] for k in records[0]}
  encoder = ExampleEncoder(ENC_SPEC)
  for _ in range(2):  # the second pass reads the per-value cache
    for serialized, record in zip(encoder.encode(columns), records):
      assert tf.train.Example.FromString(serialized) == _reference(ENC_SPEC, record)


def test_tfrecord_frames_read_back_by_tensorflow(tmp_path):
  records = [os.urandom(n) for n in (0, 1, 200, 70_000)]
  path = str(tmp_path / "f.tfrecord")
  with open(path, "wb") as f:
    f.write(tfrecord_frames(records))
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records


# --- Combiners --------------------------------------------------------------------------
def test_batch_combiners_equal_per_row_counts():
  rng = random.Random(0)
  rows = [(rng.choice(["train", "eval"]), {
      "click": float(rng.random() < 0.3), "x": rng.gauss(1e9, 3.0),
      "uid": f"u{rng.randrange(50)}", "cat": f"c{rng.randrange(4)}",
      "tags": [f"t{rng.randrange(6)}" for _ in range(rng.randrange(3))]})
      for _ in range(3000)]
  batches = [b for i in range(0, len(rows), 256) for b in rows_to_batches(
      rows[i:i + 256])]
  spec = spec_lib.spec_from_dict({"name": "comb", "features": [
      {"name": "click", "kind": "numeric", "role": "label"},
      {"name": "x", "kind": "numeric"},
      {"name": "uid", "kind": "categorical"},
      {"name": "cat", "kind": "categorical", "distribution_level": 0},
      {"name": "tags", "kind": "multi_categorical"}]})
  merge = _MergeCountsFn()
  for f in spec.vocabulary_fields:
    counts = merge.merge_accumulators([
        merge.add_input(merge.create_accumulator(), _column_values(f, b[1][f.name]))
        for b in batches if b[0] == "train"])
    expected = collections.Counter(v for s, r in rows if s == "train"
                                   for v in _values(f, r[f.name]))
    assert counts == expected, f.name
  moments = _BatchMomentsFn()
  acc = moments.create_accumulator()
  for b in batches:
    acc = moments.add_input(acc, column_moments(b[1]["x"]))
  x = np.array([r["x"] for _, r in rows])
  out = moments.extract_output(acc)
  assert out["count"] == len(x)
  assert out["mean"] == pytest.approx(x.mean(), rel=1e-12)
  assert out["std"] == pytest.approx(x.std(), rel=1e-6)
  cells = _MergeCellsFn()
  accs = {}
  for b in batches:
    for key, c in distribution_counts(b, ["cat"], ["click"]):
      accs[key] = cells.add_input(accs.get(key, {}), c)
  for (split, field), by_value in accs.items():
    for value, (n, clicks) in by_value.items():
      sel = [r for s, r in rows if s == split and (field == "__all__" or
                                                    r[field] == value)]
      assert (n, clicks) == (len(sel), sum(r["click"] for r in sel))


# --- Progress and quiet output ------------------------------------------------------------
def test_progress_lines_and_final_line(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(local_runner, "PROGRESS_EVERY_S", 0.05)
  monkeypatch.setattr(Progress, "EVERY_S", 0.0)
  raw = tmp_path / "log.csv"
  lines = ["x,click,uid,cat,tags"] + [f"{i},{i % 2},u{i % 7},c,t" for i in range(3000)]
  raw.write_text("\n".join(lines + ["1,7,bad,c,t"]) + "\n")
  spec_path = tmp_path / "spec.yaml"
  L.SPEC.save(str(spec_path))
  meta = preprocess.run(PreprocessConfig(
      raw=str(raw), output_dir=str(tmp_path / "out"), spec_path=str(spec_path),
      eval_fraction=0.3, direct_num_workers=1, tfds=False))
  out = capsys.readouterr().out.splitlines()
  final = [l for l in out if "Beam job done" in l]
  assert len(final) == 1
  assert "read 3,001" in final[0] and "written 3,000" in final[0]
  assert "rejected 1" in final[0] and "rows/s" in final[0]
  assert meta["rows_read"] == 3001
  assert not [l for l in out if "apache_beam" in l or "WARNING" in l]
  data = PreprocessedData(str(tmp_path / "out"))
  assert not os.path.exists(data.scratch_dir) or not os.listdir(data.scratch_dir)


def test_progress_printer_sums_the_workers_files(tmp_path):
  prefix = str(tmp_path / "progress")
  for i, counts in enumerate([{"read": 10, "rejected": 1}, {"read": 5, "written": 7}]):
    with open(f"{prefix}-parse-{i}.json", "w") as f:
      json.dump(counts, f)
  printer = local_runner.ProgressPrinter(prefix, every_s=60)
  assert printer.counts() == {"read": 15, "rejected": 1, "written": 7}


def test_beam_import_noise_is_dropped_unless_verbose(caplog):
  from absl import logging as absl_logging
  message = "apitools not found, and bigquery client libraries are not available"
  old = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.warning(message)
    assert message not in caplog.text
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.warning(message)
    assert message in caplog.text
  finally:
    absl_logging.set_verbosity(old)


def test_quiet_libraries_restores_logger_levels():
  beam_logger = logging.getLogger("apache_beam")
  before = beam_logger.level
  with preprocess.quiet_libraries(verbose=False):
    assert beam_logger.level == logging.ERROR
  assert beam_logger.level == before
  with preprocess.quiet_libraries(verbose=True):
    assert beam_logger.level == before
