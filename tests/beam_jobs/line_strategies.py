"""The generated lines the raw-reader tests share (not a test module): the spec they
parse against, hypothesis strategies of raw lines and valid rows, and the one-record
oracle (`one`: a parser's single verdict on one line or CSV record)."""
import csv
import io
import json

from hypothesis import assume
from hypothesis import strategies as st

from hmdn.beam_jobs import config as C
from hmdn.beam_jobs.sources import generic
from hmdn.beam_jobs.transforms.batches import DEAD_LETTER
from hmdn.features import spec as spec_lib

SPEC = spec_lib.spec_from_dict({"name": "props", "features": [
    {"name": "x", "kind": "numeric", "default": 0},
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "uid", "kind": "categorical"},
    {"name": "cat", "kind": "categorical", "default": "none"},
    {"name": "tags", "kind": "multi_categorical"},
]})
HEADER = [f.name for f in SPEC.features]
BOM = b"\xef\xbb\xbf"

# --- Strategies -----------------------------------------------------------------------
# Cells: any Unicode (line breaks only in quotes: an RFC 4180 record of several lines,
# or a bare one the csv module refuses), separators, quotes, empty, huge, numbers good
# and bad, booleans, JSON-looking text.
text = st.text(st.characters(blacklist_characters="\n\r"), max_size=30)
special = st.sampled_from([
    "", " ", ",", '"', '""', '"a,b"', "|", "||", "\t", "\x00", "\ufeff", "nan", "NaN",
    "inf", "-inf", "1e39", "-1e39", "3.4e38", "1e-50", "true", "false", "True", "null",
    '{"a": 1}', "[1, 2]", "0", "1", "2", "-0", "0x10", "1_000", "\uff11\uff12", "é", "😀",
    "\u2028",
    '"a\nb"', '"\r\n"', '"x""\n"', "\n",
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
  """A non-blank value: line breaks too (a CSV cell quotes them)."""
  value = draw(st.text(st.characters(blacklist_characters=forbid,
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


def csv_record(cells) -> bytes:
  """Cells as one RFC 4180 record (a cell holding a line break is quoted: the csv
  module quotes only the characters of its line terminator)."""
  buf = io.StringIO(newline="")
  csv.writer(buf, lineterminator="\r\n").writerow(cells)
  return buf.getvalue()[:-2].encode("utf-8", "surrogatepass")


def row_cells(row):
  return [repr(row["x"]), str(int(row["click"])), row["uid"], row["cat"],
          "|".join(row["tags"])]


def csv_line(row) -> bytes:
  return csv_record(row_cells(row))


def json_line(row) -> bytes:
  return json.dumps(row).encode("utf-8")


# --- The one-record oracle --------------------------------------------------------------
def one(fn, path, line):
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


def csv_parser():
  return generic.ParseRowFn(SPEC, C.CSV, {"*": HEADER}, ",", "", 0.3)


def json_parser():
  return generic.ParseRowFn(SPEC, C.JSONL, {}, ",", "", 0.3)
