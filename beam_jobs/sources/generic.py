"""The generic source: CSV files (with a header) or JSONL, the spec's field names as
column names."""
import csv
import difflib
import hashlib
import json
import math
import operator
import re
from typing import Any, Dict, List, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from hmdn.beam_jobs import config as C
from hmdn.beam_jobs.transforms.batches import RECORDS, merge_batches, rows_to_batches
from hmdn.beam_jobs.transforms.parse import parse_record, truncated_counter
from hmdn.beam_jobs.sources import base
from hmdn.features import spec as spec_lib
from hmdn.features.fileio import RepeatedKeyError, object_once
from hmdn.features.spec import cells as cell_lib
from hmdn.features.preprocessed import EVAL, TRAIN


class ParseRowFn(base.LineParserFn):
  """(file, line) -> (split, record) on `records`, or a dead letter with the reason."""

  def __init__(self, spec: spec_lib.FeatureSpec, input_format: str,
               headers: Mapping[str, List[str]], delimiter: str, split_key: str,
               eval_fraction: float):
    super().__init__()
    self._spec = spec
    self._format = input_format
    self._headers = dict(headers)
    self._delimiter = delimiter
    self._split_key = split_key
    self._eval_fraction = eval_fraction
    self._missing = {f.name: base.counter(f"missing_{f.name}") for f in spec.raw_fields}

  def _cells(self, source: str, line: str) -> Dict[str, Any]:
    if self._format == C.JSONL:
      return json_object(line)
    header = self._headers.get(source) or self._headers.get("*")
    if header is None:
      raise spec_lib.SpecError(f"no header known for file {source!r}")
    cells = csv_cells(line, self._delimiter)
    if len(cells) != len(header):
      raise spec_lib.SpecError(
          f"expected {len(header)} columns separated by {self._delimiter!r}, got "
          f"{len(cells)}")
    return dict(zip(header, cells))

  def parse(self, path: str, line: str):
    record = parse_record(self._spec, self._cells(path, line), self._missing)
    return base.split_for(record, self._split_key, line, self._eval_fraction), record

  # --- The vectorised path: the same verdict as `process`, a batch at a time. -------
  def parse_batch(self, path: str, lines: Sequence[bytes]):
    """Decodes, splits and types a batch column by column; a line the fast path is not
    sure of (quotes, odd bytes, a bad value...) goes through `parse_line` alone, so it
    is written or rejected with exactly the reason `process` gives it."""
    self._read.inc(len(lines))
    n = len(lines)
    if not n:
      return [], []
    texts, slow = self._decoded(lines)
    if self._format == C.JSONL:
      cells = self._json_cells(texts, slow)
    else:
      cells = self._csv_cells(path, texts, slow)
    columns = {}
    if cells is not None:
      for f in self._spec.raw_fields:
        raw = cells.get(f.name)
        columns[f.name] = self._column(f, raw if raw is not None else [None] * n, slow,
                                       strings=raw is not None and self._format == C.CSV)
    if cells is not None:
      _mark_task_violations(self._spec, columns, slow)
    good = [i for i in range(n) if i not in slow] if cells is not None else []
    if good:
      for f in self._spec.raw_fields:
        raw = cells.get(f.name)
        if raw is None:
          missing = len(good)
        elif self._format == C.CSV:  # strings: only "" is missing
          missing = raw.count("") - sum(1 for i in slow if raw[i] == "")
        else:
          missing = _missing(raw) - _missing([raw[i] for i in slow])
        if missing:
          self._missing[f.name].inc(missing)
      _truncate_sequences(self._spec, columns, good)
    batches = []
    if good:
      keys = self._split_keys(lines, columns, good)
      md5, threshold = hashlib.md5, self._eval_fraction * 10_000
      is_eval = [int.from_bytes(md5(k).digest()[:4], "big") % 10_000 < threshold
                 for k in keys]
      for split, flag in ((TRAIN, False), (EVAL, True)):
        idx = [i for i, e in zip(good, is_eval) if e is flag]
        if idx:
          take = operator.itemgetter(*idx)
          batches.append((split, {name: list(take(col)) if len(idx) > 1 else [col[idx[0]]]
                                  for name, col in columns.items()}))
    rows, dead = self.parse_rows(path, [lines[i] for i in range(n)
                                        if cells is None or i in slow])
    if rows:
      batches = merge_batches(batches + rows_to_batches(rows))
    return batches, dead

  def _decoded(self, lines):
    """Each line's (record's) text, BOM dropped, and the set of those that did not
    decode."""
    slow = set()
    texts = None
    joined = b"\n".join(lines)
    if joined.count(b"\n") == len(lines) - 1:  # else a CSV record of several lines
      try:
        texts = joined.decode("utf-8").split("\n")
      except UnicodeDecodeError:
        pass
    if texts is None:
      texts = []
      for i, line in enumerate(lines):
        try:
          texts.append(line.decode("utf-8"))
        except UnicodeDecodeError:
          texts.append("")
          slow.add(i)
    return [t[1:] if t[:1] == base.BOM else t for t in texts], slow

  def _csv_cells(self, path, texts, slow):
    header = self._headers.get(path) or self._headers.get("*")
    if header is None or self._delimiter in '"\r\n':
      return None
    joined = "".join(texts)
    if any(c in joined for c in _CSV_SLOW):  # the csv module's cases
      for i, t in enumerate(texts):
        if any(c in t for c in _CSV_SLOW):
          slow.add(i)
    if max(map(len, texts), default=0) > csv.field_size_limit():
      for i, t in enumerate(texts):
        if len(t) > csv.field_size_limit():  # (a cell that long: the csv.Error)
          slow.add(i)
    width = len(header)
    split = [t.split(self._delimiter) for t in texts]
    for i, cells in enumerate(split):
      if len(cells) != width or not texts[i]:
        slow.add(i)
        split[i] = [""] * width
    wanted = {f.name for f in self._spec.raw_fields}
    return {name: column for name, column in zip(header, zip(*split)) if name in wanted}

  def _json_cells(self, texts, slow):
    objects = []
    for i, t in enumerate(texts):
      obj = None
      if i not in slow and not _SURROGATE.search(t):
        try:
          obj = json.loads(t, object_pairs_hook=object_once)
        except (ValueError, RecursionError):
          pass
      if not isinstance(obj, dict):
        slow.add(i)
        obj = {}
      objects.append(obj)
    return {f.name: [o.get(f.name) for o in objects] for f in self._spec.raw_fields}

  def _column(self, f, raw, slow, strings=False):
    """One field's typed values; a value the fast rule is unsure of is typed by the
    spec (`parse_value`), and a row whose value is rejected is marked slow. `strings`:
    every cell is known to be a str (CSV)."""
    kind = "label" if f.role == spec_lib.LABEL else f.kind
    if kind == spec_lib.SEQUENCE:
      return self._sequence_column(f, raw, slow)
    if strings or all(v.__class__ is str for v in raw):
      plain = (max(map(len, raw), default=0) <= spec_lib.MAX_CELL_CHARS
               and "" not in raw and not any(map(str.isspace, raw)))
    else:
      plain = False
    if plain and kind == spec_lib.CATEGORICAL:
      return raw
    if plain and kind == spec_lib.MULTI_CATEGORICAL:
      sep = f.separator
      return [p if "" not in p else [x for x in p if x]
              for p in (v.split(sep) for v in raw)]
    if plain and cell_lib.is_number_column(raw):  # all numbers: finite, in range?
      values = list(map(float, raw))
      if values:
        if kind == "label":
          if set(values) <= {0.0, 1.0}:
            return values
        elif (math.isfinite(sum(values))
              and max(values, default=0.0) <= spec_lib.FLOAT32_MAX
              and min(values, default=0.0) >= -spec_lib.FLOAT32_MAX):
          return values
    return self._column_by_value(f, kind, raw, slow)

  def _column_by_value(self, f, kind, raw, slow):
    values = list(raw)
    unsure = []
    for i, v in enumerate(raw):
      if type(v) is not str or not v or len(v) > spec_lib.MAX_CELL_CHARS or v.isspace():
        unsure.append(i)
    if kind in ("label", spec_lib.NUMERIC):
      for i, v in enumerate(raw):
        if values[i].__class__ is str:
          try:
            x = cell_lib.strict_float(v)
          except ValueError:
            unsure.append(i)
            continue
          ok = (x == 0.0 or x == 1.0) if kind == "label" else (
              -spec_lib.FLOAT32_MAX <= x <= spec_lib.FLOAT32_MAX)
          values[i] = x
          if not ok:
            unsure.append(i)
    elif kind == spec_lib.MULTI_CATEGORICAL:
      sep = f.separator
      values = [[x for x in v.split(sep) if x] if v.__class__ is str else v
                for v in raw]
    for i in unsure:
      if i in slow:
        continue
      try:
        values[i] = spec_lib.check_cell(f, self._spec.parse_value(f, raw[i]))
      except base.DATA_ERRORS:
        slow.add(i)
    return values

  def _sequence_column(self, f, raw, slow):
    """A sequence's values, each cell typed by the spec (every element checked); a row
    whose cell is refused is marked slow (its reason comes from `parse_line`)."""
    values = []
    for i, v in enumerate(raw):
      if i not in slow:
        try:
          values.append(spec_lib.check_cell(f, self._spec.parse_value(f, v)))
          continue
        except base.DATA_ERRORS:
          slow.add(i)
      values.append([])
    return values

  def _split_keys(self, lines, columns, good):
    if self._split_key:
      col = columns[self._split_key]
      return [str(col[i]).encode("utf-8") for i in good]
    return [line[3:] if line[:3] == _BOM_BYTES else line
            for line in (lines[i] for i in good)]


_BOM_BYTES = base.BOM.encode("utf-8")
# A record holding one of these is left to the csv module (`csv_cells`): a quote, a line
# break (inside quotes, or one it refuses), a NUL byte.
_CSV_SLOW = ('"', "\r", "\n", "\x00")
# A JSON escape of a lone surrogate (no UTF-8 form): such a line takes the exact path.
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _mark_task_violations(spec, columns, slow) -> None:
  """Rows where an `after` task is 1 and its prerequisite 0 go the per-row way, whose
  parse_record rejects them with the reason."""
  for f in spec.labels:
    if f.after is None:
      continue
    for i, (task, prerequisite) in enumerate(zip(columns[f.name], columns[f.after])):
      if spec_lib.violates_after(task, prerequisite):
        slow.add(i)


def _truncate_sequences(spec, columns, good) -> None:
  """The written rows' raw sequences longer than max_length keep their last values,
  counted as `parse_record` counts them."""
  for f in spec.sequence_fields:
    if f.is_derived:
      continue
    column = columns[f.name]
    cut = [i for i in good if len(column[i]) > f.max_length]
    for i in cut:
      column[i] = spec_lib.truncate(f, column[i])
    if cut:
      truncated_counter(f.name).inc(len(cut))


def _missing(column: Sequence[Any]) -> int:
  """How many cells `parse_record` counts as missing: None, "" or []."""
  return column.count(None) + column.count("") + column.count([])


def json_object(line: str) -> Dict[str, Any]:
  """A JSONL line -> its object; raises SpecError (not JSON, too deep, not an object,
  a key given twice in any object of it)."""
  try:
    obj = json.loads(line, object_pairs_hook=object_once)
  except RepeatedKeyError as e:
    raise spec_lib.SpecError(str(e))
  except RecursionError:
    raise spec_lib.SpecError("not valid JSON (nested too deeply)")
  except ValueError as e:  # also an integer too long to convert
    raise spec_lib.SpecError(f"not valid JSON ({e})")
  if not isinstance(obj, dict):
    raise spec_lib.SpecError(f"expected a JSON object, got {type(obj).__name__}")
  return obj


def csv_cells(record: str, delimiter: str) -> List[str]:
  """One CSV record (its lines joined: a quoted field may hold line breaks) -> its
  cells; raises SpecError on what the csv module refuses (a field over its size
  limit, a quote left open, a stray carriage return or NUL byte)."""
  if record[-1:] in ("\n", "\r"):  # the csv module would drop it as a line's end
    raise spec_lib.SpecError("not a valid CSV record (a line break outside quotes at its "
                             "end)")
  try:
    return next(csv.reader([record], delimiter=delimiter, strict=True), [])
  except csv.Error as e:
    raise spec_lib.SpecError(f"not a valid CSV record ({e})")


@beam.ptransform_fn
def ReadGeneric(p, paths, spec, input_format, headers, delimiter=",", split_key="",
                eval_fraction=0.2, progress_prefix=""):
  """CSV / JSONL files described by the spec (the column names are its field names)
  -> {records: record batches, dead_letter: rejected lines}."""
  is_csv = input_format == C.CSV
  return (p | "ReadLines" >> base.ReadLineBatches(
              paths, skip_header_lines=1 if is_csv else 0,
              csv_delimiter=delimiter if is_csv else "")
          | "ParseRows" >> base.ParseLineBatches(
              ParseRowFn(spec, input_format, headers, delimiter, split_key,
                         eval_fraction), main=RECORDS, progress_prefix=progress_prefix))


def format_of(paths: Sequence[str], input_format: str) -> str:
  """csv or jsonl: as given, or by the files' extension (all the same) for auto."""
  if input_format != C.AUTO:
    if input_format not in (C.CSV, C.JSONL):
      raise C.PreprocessError(f"--input_format: expected one of {C.INPUT_FORMATS}, got "
                              f"{input_format!r}")
    return input_format
  kinds = {C.JSONL if p.rstrip(".gz").endswith((".jsonl", ".json")) else C.CSV
           for p in paths}
  if len(kinds) > 1:
    raise C.PreprocessError(f"--raw mixes CSV and JSONL files ({paths[:4]}...); pass "
                            "--input_format")
  return kinds.pop()


def read_headers(paths: Sequence[str], spec: spec_lib.FeatureSpec,
                 delimiter: str) -> Dict[str, List[str]]:
  """Reads each CSV file's header and checks it against the spec, naming the file."""
  headers = {}
  for path in paths:
    with FileSystems.open(path) as f:
      first = f.readline()
    try:
      first = base.decode_line(first).rstrip("\r\n")  # a BOM is dropped
      header = csv_cells(first, delimiter) if first else []
    except spec_lib.SpecError as e:
      raise C.PreprocessError(f"{path}: header line: {e}")
    if not header:
      raise C.PreprocessError(f"{path}: empty file, no header line")
    missing = [f.name for f in spec.raw_fields if f.required and f.name not in header]
    if missing:
      raise C.PreprocessError(_missing_columns(path, missing, header, spec))
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
      raise C.PreprocessError(f"{path}: header repeats column(s) {dupes}")
    headers[path] = header
  # A file without an optional column takes its default (a log whose older files predate
  # the column); a column no file has is misnamed or not logged, and every row would get
  # the default.
  nowhere = [f.name for f in spec.raw_fields if not any(f.name in h for h in headers.values())]
  if nowhere:
    path, header = next(iter(headers.items()))
    raise C.PreprocessError(_missing_columns(
        path if len(headers) == 1 else f"{len(headers)} files (the first {path})",
        nowhere, header, spec) + "; a default fills empty cells, not a column no file has")
  return headers


def _missing_columns(where: str, missing: List[str], header: List[str],
                     spec: spec_lib.FeatureSpec) -> str:
  """The error for spec columns a header lacks, with a header name close to each."""
  names = {f.name for f in spec.features}
  unused = {h.lower(): h for h in header if h not in names}
  hints = [f"{m!r} (is it {unused[near[0]]!r}?)" for m in missing
           for near in [difflib.get_close_matches(m.lower(), list(unused), 1)] if near]
  return (f"{where}: column(s) {missing} of spec {spec.source} are not in the header "
          f"{header}" + (f"; close: {', '.join(hints)}" if hints else ""))


class GenericSource(base.Source):
  name = C.GENERIC
  label = "Generic"

  def resolve(self, config, spec):
    paths = base.match_paths(config.raw)
    input_format = format_of(paths, config.input_format)
    headers = read_headers(paths, spec, config.delimiter) if input_format == C.CSV else {}
    return base.Inputs(tuple(paths), input_format, headers,
                       duplicates=tuple(base.duplicate_paths(config.raw)))

  batched = True

  def read(self, p, inputs, spec, config, progress_prefix=""):
    return p | self.label >> ReadGeneric(
        list(inputs.paths), spec, inputs.input_format, inputs.headers, config.delimiter,
        config.split_key, config.eval_fraction, progress_prefix)
