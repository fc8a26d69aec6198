"""What every source shares: reading lines, the one line-parser DoFn, and `Source`.

A source turns `--raw` into the tags of the job's parse step: `records` ((split, record)
pairs whose record holds every raw field of the spec, typed) and `dead_letter`
({source, row, reason}). Every raw line is read as bytes and goes through
`LineParserFn`, which counts it, decodes it, parses it and, on anything the line's
content can cause (undecodable bytes, a csv.Error, a SpecError...), rejects it with the
reason: one bad line never aborts the job, and read = written + rejected holds for
every source.

The generic source takes the batched path: `ReadLineBatches` cuts the files into byte
ranges the workers share and reads each into batches of lines (of CSV, of records: a
quoted field may hold line breaks, see `csv_records`); `ParseBatchFn` hands a
batch to `LineParserFn.parse_batch`, which types it column by column and sends only
the lines it is not sure of through the per-line `parse_line`, so a bad line is still
rejected alone with the reason `process` gives it, and counted once.
"""
import abc
import csv
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from hmdn.beam_jobs.sources import csv_records
from hmdn.beam_jobs.transforms.batches import (Batch, DEAD_LETTER, NAMESPACE, Record,
                                               rows_to_batches)

from hmdn.beam_jobs.transforms.progress import Progress

from hmdn.beam_jobs.transforms.time_split import split_of
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError
from hmdn.features import spec as spec_lib

ROWS_READ = "rows_read"
ROWS_REJECTED = "rows_rejected"


def counter(name: str):
  """A counter in the job's namespace (read back and reconciled by preprocess.run)."""
  return beam.metrics.Metrics.counter(NAMESPACE, name)


def dead_letter(source: str, row: str, reason: str) -> beam.pvalue.TaggedOutput:
  return beam.pvalue.TaggedOutput(DEAD_LETTER,
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


def split_for(record: Record, split_key: str, fallback_key: str,
              eval_fraction: float) -> str:
  """The record's split: a hash of its `split_key` value, or of `fallback_key`."""
  key = str(record[split_key]) if split_key else fallback_key
  return split_of(key, eval_fraction)


class LineParserFn(beam.DoFn, abc.ABC):
  """(file, line) -> what `parse(file, line)` returns, or a dead letter with the reason.

  The one place a raw line is counted (`read_counter`), parsed, and rejected
  (`rejected_counter`) when `parse` raises `SpecError`; a subclass says only how its
  lines parse. Side files (Ali-CCP common features, MovieLens users and items) count
  in their own counters, so the impressions' read = written + rejected still holds.
  With `progress_prefix` set (ParseLines does, for the impressions only) it also
  feeds the progress lines the driver prints while the job runs.
  """
  progress_prefix = ""

  def __init__(self, read_counter: str = ROWS_READ,
               rejected_counter: str = ROWS_REJECTED, encoding: str = "utf-8"):
    self._read = counter(read_counter)
    self._rejected = counter(rejected_counter)
    self._encoding = encoding

  @abc.abstractmethod
  def parse(self, path: str, line: str) -> Any:
    """One decoded line of `path` -> its parsed value; raises SpecError if bad."""

  def parse_line(self, path: str, line: Any) -> Any:
    """Decodes (bytes) and parses one line; raises one of DATA_ERRORS on a bad line."""
    if isinstance(line, bytes):
      line = decode_line(line, self._encoding)
    elif line.startswith(BOM):
      line = line[1:]
    return self.parse(path, line)

  def setup(self):
    self._progress_counts()

  def _progress_counts(self) -> Progress:
    """The progress file's counts, made on first use (a caller may skip setup)."""
    progress = getattr(self, "_progress", None)
    if progress is None:
      progress = self._progress = Progress(self.progress_prefix, "parse")
    return progress

  def process(self, element: Tuple[str, Any]):
    path, line = element
    self._read.inc()
    try:
      out = self.parse_line(path, line)
    except DATA_ERRORS as e:
      self._rejected.inc()
      self._progress_counts().add(read=1, rejected=1)
      yield dead_letter(path, printable_row(line, self._encoding), reason_of(e))
      return
    self._progress_counts().add(read=1)
    yield out

  def finish_bundle(self):
    self._progress_counts().flush()

  def teardown(self):
    self._progress_counts().flush()

  def parse_rows(self, path: str, lines: Sequence[Any]) -> Tuple[List, List]:
    """`process` over lines already counted as read: (parsed, dead letters)."""
    parsed, dead = [], []
    for line in lines:
      try:
        parsed.append(self.parse_line(path, line))
      except DATA_ERRORS as e:
        self._rejected.inc()
        dead.append(dead_letter(path, printable_row(line, self._encoding),
                                reason_of(e)))
    return parsed, dead

  def parse_batch(self, path: str, lines: Sequence[Any]) -> Tuple[List, List]:
    """A batch of one file's lines -> (record batches, dead letters), each line
    counted once; a subclass whose `parse` yields (split, record) may override it
    with a vectorised path, as long as each line's verdict is `process`'s."""
    self._read.inc(len(lines))
    parsed, dead = self.parse_rows(path, lines)
    return rows_to_batches(parsed), dead


@beam.ptransform_fn
def ParseLines(lines, fn: LineParserFn, main: str = "rows", progress_prefix: str = ""):
  """(file, line) pairs -> {main: parsed, dead_letter: rejected lines}; with
  `progress_prefix`, the lines count in the progress lines as read."""
  fn.progress_prefix = progress_prefix
  return lines | "Parse" >> beam.ParDo(fn).with_outputs(DEAD_LETTER, main=main)


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


class Source(abc.ABC):
  """One input format: `resolve` checks `--raw` (clear `PreprocessError`s, no Beam job
  started); `read` applies the reader to the pipeline root and returns
  {RECORDS: (split, record), DEAD_LETTER: {source, row, reason}}."""
  name = ""
  label = ""  # the reader's stage label
  # True: `read` returns record batches (Batch); else (split, record) pairs, which
  # the job batches after the source's joins.
  batched = False

  @abc.abstractmethod
  def resolve(self, config: PreprocessConfig, spec: spec_lib.FeatureSpec) -> Inputs:
    """The inputs of `--raw`, checked; a PreprocessError names what is wrong."""

  @abc.abstractmethod
  def read(self, p: beam.Pipeline, inputs: Inputs, spec: spec_lib.FeatureSpec,
           config: PreprocessConfig,
           progress_prefix: str = "") -> Dict[str, beam.PCollection]:
    """The reader applied to the pipeline root: {RECORDS: ..., DEAD_LETTER: ...}."""

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r})"


# --- Batched reading and parsing (the hot path) ----------------------------------------
# The job's cost is per element, not per byte: a file is cut into byte ranges that
# the runner spreads over its workers (a Reshuffle of a few range descriptors), and
# each range is read into batches of lines, so one element carries BATCH_ROWS rows.
BATCH_ROWS = 1024
MIN_RANGE_BYTES = 1 << 20
MAX_RANGE_BYTES = 16 << 20
_BOM_BYTES = BOM.encode("utf-8")


def byte_ranges(paths: Sequence[str], skip_header_lines: int = 0,
                ranges_per_file: int = 16) -> List[Tuple[str, int, int, int]]:
  """(path, start, end, skip_header_lines) ranges covering the files; a compressed
  file is one range (it cannot be read from the middle)."""
  from apache_beam.io.filesystem import CompressionTypes
  out = []
  for path in paths:
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
      out.append((path, 0, -1, skip_header_lines))
      continue
    step = min(MAX_RANGE_BYTES, max(MIN_RANGE_BYTES, size // ranges_per_file + 1))
    for start in range(0, max(size, 1), step):
      out.append((path, start, min(start + step, size), skip_header_lines))
  return out


def csv_record_ranges(ranges: Sequence[Tuple[str, int, int, int]],
                      delimiter: str) -> List[Tuple[str, int, int, int]]:
  """`byte_ranges` of CSV files, each range moved to start at a record (RFC 4180: a
  quoted field may hold line breaks, so a line start may be inside a record): each
  file is scanned from its start (`csv_records.record_starts`, at C speed where it
  holds no quote); ranges left empty are dropped. A range reader then reads the
  records that start in its range, none running past its end."""
  from apache_beam.io.filesystem import CompressionTypes
  by_path: Dict[str, List[Tuple[str, int, int, int]]] = {}
  for r in ranges:
    by_path.setdefault(r[0], []).append(r)
  out = []
  for path, rs in by_path.items():
    if len(rs) == 1:  # one range (a compressed file, a small one) starts at 0
      out.extend(rs)
      continue
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      starts = [0] + csv_records.record_starts(f, [r[1] for r in rs[1:]], delimiter)
    ends = starts[1:] + [rs[-1][2]]
    out.extend((path, s, e, rs[0][3]) for s, e in zip(starts, ends) if s < e)
  return out


def _split_lines(data: bytes, final: bool,
                 keep_cr: bool = False) -> Tuple[List[bytes], bytes]:
  """Lines of a buffer as Beam's text reader cuts them ("\\n", or "\\r\\n" as one
  separator); returns (complete lines, the unterminated rest). `keep_cr`: a line's
  "\\r" is kept (a CSV record joins its lines with their own line breaks)."""
  lines = data.split(b"\n")
  rest = lines.pop()
  if not keep_cr:
    lines = [l[:-1] if l.endswith(b"\r") else l for l in lines]
  if final and rest:
    lines.append(rest)
    rest = b""
  return lines, rest


def _nonblank(lines: List[bytes]) -> List[bytes]:
  return [l for l in lines if l.strip() and not is_blank(l)]


class ReadRangeFn(beam.DoFn):
  """(path, start, end, skip) -> (path, [line bytes]) batches of the lines that START
  in [start, end) (the first `skip` lines of the file dropped, blank lines skipped,
  as `ReadLines` reads them), in file order.

  With `csv_delimiter`, an element is a CSV record (RFC 4180: the lines of a quoted
  field's line breaks joined, see `csv_records`), so a batch holds `batch_rows`
  records and `rows_read` counts records; the ranges must then start at records
  (`csv_record_ranges`).
  """
  CHUNK = 1 << 16

  def __init__(self, batch_rows: int = BATCH_ROWS, csv_delimiter: str = ""):
    self._batch_rows = batch_rows
    self._csv_delimiter = csv_delimiter

  def process(self, element):
    path, start, end, skip = element
    pending: List[bytes] = []
    size = self._batch_rows
    joiner = csv_records.RecordJoiner(self._csv_delimiter) if self._csv_delimiter \
        else None
    for lines in self._lines(path, start, end, skip, keep_cr=joiner is not None):
      pending += _nonblank(joiner.feed(lines) if joiner else lines)
      full = len(pending) - len(pending) % size
      for i in range(0, full, size):
        yield path, pending[i:i + size]
      pending = pending[full:]
    if joiner:
      pending += _nonblank(joiner.finish())
    if pending:
      yield path, pending

  def _lines(self, path, start, end, skip, keep_cr=False):
    from apache_beam.io.filesystem import CompressionTypes
    if end < 0:  # compressed: the whole file, streamed.
      with FileSystems.open(path) as f:
        rest = b""
        while True:
          chunk = f.read(8 << 20)
          lines, rest = _split_lines(rest + chunk, final=not chunk, keep_cr=keep_cr)
          if skip:
            dropped = lines[:skip]
            lines, skip = lines[skip:], skip - len(dropped)
          yield lines
          if not chunk:
            return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      pos = start
      if start > 0:  # the line running into this range belongs to the previous one.
        f.seek(start - 1)
        if f.read(1) != b"\n":
          tail = b""
          while b"\n" not in tail:
            piece = f.read(self.CHUNK)
            if not piece:
              return
            tail = piece
            pos = f.tell() - len(piece)
          pos += tail.index(b"\n") + 1
          if pos >= end:
            return
          f.seek(pos)
      data = f.read(end - pos)
      while not data.endswith(b"\n"):  # finish the last line that starts in range.
        piece = f.read(self.CHUNK)
        if not piece:
          break
        cut = piece.find(b"\n")
        data += piece if cut < 0 else piece[:cut + 1]
        if cut >= 0:
          break
      lines, _ = _split_lines(data, final=True, keep_cr=keep_cr)
      yield lines[skip:] if start == 0 and skip else lines


@beam.ptransform_fn
def ReadLineBatches(p, paths: Sequence[str], skip_header_lines: int = 0,
                    batch_rows: int = BATCH_ROWS, csv_delimiter: str = ""):
  """Every non-blank line (with `csv_delimiter`: CSV record) of the files, as (file,
  [bytes]) batches, the files cut into byte ranges the workers share."""
  ranges = byte_ranges(paths, skip_header_lines)
  if csv_delimiter:  # each file's ranges moved to record starts, a file a worker
    by_file = [[r for r in ranges if r[0] == path] for path in paths]
    ranges = (p | "Files" >> beam.Create(by_file)
              | "RangesAtRecords" >> beam.FlatMap(csv_record_ranges, csv_delimiter))
  else:
    ranges = p | "Ranges" >> beam.Create(ranges)
  return (ranges
          | "SpreadRanges" >> beam.Reshuffle()
          | "ReadRanges" >> beam.ParDo(ReadRangeFn(batch_rows, csv_delimiter)))


class ParseBatchFn(beam.DoFn):
  """(file, [line]) -> record batches (split, {field: column}) on the main output, and
  a dead letter per rejected line: `parser.parse_batch`, with the parser's counters."""

  def __init__(self, parser: "LineParserFn", progress_prefix: str = ""):
    self._parser = parser
    self._progress_prefix = progress_prefix

  def setup(self):
    self._progress = Progress(self._progress_prefix, "parse")

  def process(self, element):
    path, lines = element
    batches, dead = self._parser.parse_batch(path, lines)
    for d in dead:
      yield d
    yield from batches
    self._progress.add(read=len(lines), rejected=len(dead))

  def finish_bundle(self):
    self._progress.flush()

  def teardown(self):
    self._progress.flush()


@beam.ptransform_fn
def ParseLineBatches(batches, fn: "LineParserFn", main: str = "rows",
                     progress_prefix: str = ""):
  """(file, [line]) batches -> {main: record batches, dead_letter: rejected lines}."""
  return batches | "ParseBatches" >> beam.ParDo(
      ParseBatchFn(fn, progress_prefix)).with_outputs(DEAD_LETTER, main=main)
