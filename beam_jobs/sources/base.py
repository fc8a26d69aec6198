"""What every source shares: reading lines, the one line-parser DoFn, and `Source`.

A source turns `--raw` into the tags of the job's parse step: `records` ((split, record)
pairs whose record holds every raw field of the spec, typed) and `dead_letter`
({source, row, reason}). Every raw line is read as bytes and goes through
`LineParserFn`, which counts it, decodes it, parses it and, on anything the line's
content can cause (undecodable bytes, a csv.Error, a SpecError...), rejects it with the
reason: one bad line never aborts the job, and read = written + rejected holds for
every source.
"""
import csv
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs import transforms as T
from beam_jobs.config import PreprocessConfig, PreprocessError
from features import spec as spec_lib

ROWS_READ = "rows_read"
ROWS_REJECTED = "rows_rejected"


def counter(name: str):
  """A counter in the job's namespace (read back and reconciled by preprocess.run)."""
  return beam.metrics.Metrics.counter(T.NAMESPACE, name)


def dead_letter(source: str, row: str, reason: str) -> beam.pvalue.TaggedOutput:
  return beam.pvalue.TaggedOutput(T.DEAD_LETTER,
                                  {"source": source, "row": row, "reason": reason})


BOM = "\ufeff"
# What a line's content can raise while it is parsed: each is that line's dead letter.
# (SpecError and UnicodeDecodeError are ValueErrors; OverflowError: float() of a huge
# JSON integer; RecursionError: deeply nested JSON; csv.Error: a field over the csv
# module's limit, a stray carriage return.) Anything else is a bug and fails the job.
DATA_ERRORS = (ValueError, OverflowError, RecursionError, csv.Error)


def reason_of(error: BaseException) -> str:
  """A dead-letter reason: the error's message (its type when the message is empty)."""
  if isinstance(error, spec_lib.SpecError):
    return str(error) or type(error).__name__
  return f"{type(error).__name__}: {error}".rstrip(": ")


def decode_line(line: bytes, encoding: str = "utf-8") -> str:
  """A raw line's bytes -> text, a leading BOM dropped; raises SpecError naming the
  first undecodable byte. (Beam cannot say which line of a file is the first, so a
  BOM is dropped at the start of any line: U+FEFF is never a real leading value.)"""
  try:
    text = line.decode(encoding)
  except UnicodeDecodeError as e:
    raise spec_lib.SpecError(f"not valid {encoding}: byte {line[e.start:e.start + 1]!r} "
                             f"at offset {e.start}")
  return text[1:] if text.startswith(BOM) else text


def printable_row(line: Any, encoding: str = "utf-8") -> str:
  """The row as the dead letter shows it: undecodable bytes as \\x escapes."""
  if isinstance(line, bytes):
    return line.decode(encoding, "backslashreplace")
  return line


def split_for(record: T.Record, split_key: str, fallback_key: str,
              eval_fraction: float) -> str:
  """The record's split: a hash of its `split_key` value, or of `fallback_key`."""
  key = str(record[split_key]) if split_key else fallback_key
  return T.split_of(key, eval_fraction)


class LineParserFn(beam.DoFn):
  """(file, line) -> what `parse(file, line)` returns, or a dead letter with the reason.

  The one place a raw line is counted (`read_counter`), parsed, and rejected
  (`rejected_counter`) when `parse` raises `SpecError`; a subclass says only how its
  lines parse. Side files (Ali-CCP common features, MovieLens users and items) count
  in their own counters, so the impressions' read = written + rejected still holds.
  """

  def __init__(self, read_counter: str = ROWS_READ,
               rejected_counter: str = ROWS_REJECTED, encoding: str = "utf-8"):
    self._read = counter(read_counter)
    self._rejected = counter(rejected_counter)
    self._encoding = encoding

  def parse(self, path: str, line: str) -> Any:
    raise NotImplementedError

  def parse_line(self, path: str, line: Any) -> Any:
    """Decodes (bytes) and parses one line; raises one of DATA_ERRORS on a bad line."""
    if isinstance(line, bytes):
      line = decode_line(line, self._encoding)
    elif line.startswith(BOM):
      line = line[1:]
    return self.parse(path, line)

  def process(self, element: Tuple[str, Any]):
    path, line = element
    self._read.inc()
    try:
      out = self.parse_line(path, line)
    except DATA_ERRORS as e:
      self._rejected.inc()
      yield dead_letter(path, printable_row(line, self._encoding), reason_of(e))
      return
    yield out


@beam.ptransform_fn
def ParseLines(lines, fn: LineParserFn, main: str = "rows"):
  """(file, line) pairs -> {main: parsed, dead_letter: rejected lines}."""
  return lines | "Parse" >> beam.ParDo(fn).with_outputs(T.DEAD_LETTER, main=main)


def is_blank(line: Any) -> bool:
  """A line with nothing but white space (and a BOM) is skipped, not counted."""
  if isinstance(line, bytes):
    return line.strip().lstrip(BOM.encode("utf-8")).strip() == b""
  return line.strip().lstrip(BOM).strip() == ""


@beam.ptransform_fn
def ReadLines(p, paths: Sequence[str], skip_header_lines: int = 0):
  """Every non-blank line of the files, as (file, line bytes) pairs: the bytes are
  decoded per line by `LineParserFn`, so one undecodable line is one dead letter."""
  lines = [p | f"Read{i}" >> beam.io.ReadFromTextWithFilename(
               path, skip_header_lines=skip_header_lines, coder=beam.coders.BytesCoder())
           for i, path in enumerate(paths)]
  return (lines | "FlattenFiles" >> beam.Flatten()
          | "DropBlankLines" >> beam.Filter(lambda fl: not is_blank(fl[1])))


def path_key(path: str) -> str:
  """The identity of a file: local paths resolved (symlinks, `..`), others as given."""
  if FileSystems.get_scheme(path) is None:
    return os.path.realpath(path)
  return path.rstrip("/")


def match_paths(patterns: str) -> List[str]:
  """`--raw`'s comma-separated globs -> the files, each glob sorted, each file once
  (a file two globs match is read once: `duplicate_paths` lists them); an error names
  the glob that matches nothing."""
  paths, seen = [], set()
  for pattern in [p for p in patterns.split(",") if p]:
    found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not found:
      raise PreprocessError(f"--raw: no file matches {pattern!r}")
    for path in sorted(found):
      if path_key(path) not in seen:
        seen.add(path_key(path))
        paths.append(path)
  if not paths:
    raise PreprocessError("--raw: no input pattern given")
  return paths


def duplicate_paths(patterns: str) -> List[str]:
  """The files more than one of `--raw`'s globs match (each read once)."""
  counts: Dict[str, int] = {}
  first: Dict[str, str] = {}
  for pattern in [p for p in patterns.split(",") if p]:
    for m in FileSystems.match([pattern])[0].metadata_list:
      key = path_key(m.path)
      counts[key] = counts.get(key, 0) + 1
      first.setdefault(key, m.path)
  return sorted(first[k] for k, n in counts.items() if n > 1)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a source resolved `--raw` to, checked before any pipeline is built."""
  paths: Tuple[str, ...]
  input_format: str  # recorded in the metadata
  headers: Mapping[str, List[str]] = dataclasses.field(default_factory=dict)
  # Files matched by more than one glob of --raw (read once; recorded in the metadata).
  duplicates: Tuple[str, ...] = ()
  # Folders the source reads as a whole (MovieLens): the output may not be in them.
  folders: Tuple[str, ...] = ()


class Source:
  """One input format: `resolve` checks `--raw` (clear `PreprocessError`s, no Beam job
  started); `read` applies the reader to the pipeline root and returns
  {RECORDS: (split, record), DEAD_LETTER: {source, row, reason}}."""
  name = ""
  label = ""  # the reader's stage label

  def resolve(self, config: PreprocessConfig, spec: spec_lib.FeatureSpec) -> Inputs:
    raise NotImplementedError

  def read(self, p: beam.Pipeline, inputs: Inputs, spec: spec_lib.FeatureSpec,
           config: PreprocessConfig) -> Dict[str, beam.PCollection]:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"
