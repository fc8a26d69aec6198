"""The generic source: CSV files (with a header) or JSONL, the spec's field names as
column names."""
import csv
import json
from typing import Any, Dict, List, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs import config as C
from beam_jobs import transforms as T
from beam_jobs.sources import base
from features import spec as spec_lib


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
    record = T.parse_record(self._spec, self._cells(path, line), self._missing)
    return base.split_for(record, self._split_key, line, self._eval_fraction), record


def json_object(line: str) -> Dict[str, Any]:
  """A JSONL line -> its object; raises SpecError (not JSON, too deep, not an object)."""
  try:
    obj = json.loads(line)
  except RecursionError:
    raise spec_lib.SpecError("not valid JSON (nested too deeply)")
  except ValueError as e:  # also an integer too long to convert
    raise spec_lib.SpecError(f"not valid JSON ({e})")
  if not isinstance(obj, dict):
    raise spec_lib.SpecError(f"expected a JSON object, got {type(obj).__name__}")
  return obj


def csv_cells(line: str, delimiter: str) -> List[str]:
  """One CSV line -> its cells; raises SpecError on what the csv module refuses (a
  field over its size limit, a stray carriage return or NUL byte)."""
  try:
    return next(csv.reader([line], delimiter=delimiter, strict=True), [])
  except csv.Error as e:
    raise spec_lib.SpecError(f"not a valid CSV line ({e})")


@beam.ptransform_fn
def ReadGeneric(p, paths, spec, input_format, headers, delimiter=",", split_key="",
                eval_fraction=0.2):
  """CSV / JSONL files described by the spec (the column names are its field names)."""
  return (p | "ReadLines" >> base.ReadLines(
              paths, skip_header_lines=1 if input_format == C.CSV else 0)
          | "ParseRows" >> base.ParseLines(
              ParseRowFn(spec, input_format, headers, delimiter, split_key,
                         eval_fraction), main=T.RECORDS))


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
      raise C.PreprocessError(
          f"{path}: column(s) {missing} of spec {spec.source} are not in the header "
          f"{header}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
      raise C.PreprocessError(f"{path}: header repeats column(s) {dupes}")
    headers[path] = header
  return headers


class GenericSource(base.Source):
  name = C.GENERIC
  label = "Generic"

  def resolve(self, config, spec):
    paths = base.match_paths(config.raw)
    input_format = format_of(paths, config.input_format)
    headers = read_headers(paths, spec, config.delimiter) if input_format == C.CSV else {}
    return base.Inputs(tuple(paths), input_format, headers,
                       duplicates=tuple(base.duplicate_paths(config.raw)))

  def read(self, p, inputs, spec, config):
    return p | self.label >> ReadGeneric(
        list(inputs.paths), spec, inputs.input_format, inputs.headers, config.delimiter,
        config.split_key, config.eval_fraction)
