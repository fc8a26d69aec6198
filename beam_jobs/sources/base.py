"""What every source shares: reading lines, the one line-parser DoFn, and `Source`.

A source turns `--raw` into the tags of the job's parse step: `records` ((split, record)
pairs whose record holds every raw field of the spec, typed) and `dead_letter`
({source, row, reason}). Every raw line goes through `LineParserFn`, which counts it,
parses it and, on a `SpecError`, rejects it with the reason, so read = written +
rejected holds for every source.
"""
import dataclasses
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
               rejected_counter: str = ROWS_REJECTED):
    self._read = counter(read_counter)
    self._rejected = counter(rejected_counter)

  def parse(self, path: str, line: str) -> Any:
    raise NotImplementedError

  def process(self, element: Tuple[str, str]):
    path, line = element
    self._read.inc()
    try:
      out = self.parse(path, line)
    except spec_lib.SpecError as e:
      self._rejected.inc()
      yield dead_letter(path, line, str(e))
      return
    yield out


@beam.ptransform_fn
def ParseLines(lines, fn: LineParserFn, main: str = "rows"):
  """(file, line) pairs -> {main: parsed, dead_letter: rejected lines}."""
  return lines | "Parse" >> beam.ParDo(fn).with_outputs(T.DEAD_LETTER, main=main)


@beam.ptransform_fn
def ReadLines(p, paths: Sequence[str], skip_header_lines: int = 0, coder=None):
  """Every non-blank line of the files, as (file, line) pairs."""
  kwargs = {"coder": coder} if coder is not None else {}
  lines = [p | f"Read{i}" >> beam.io.ReadFromTextWithFilename(
               path, skip_header_lines=skip_header_lines, **kwargs)
           for i, path in enumerate(paths)]
  return (lines | "FlattenFiles" >> beam.Flatten()
          | "DropBlankLines" >> beam.Filter(lambda fl: fl[1].strip() != ""))


def match_paths(patterns: str) -> List[str]:
  """`--raw`'s comma-separated globs -> the files, each glob sorted; an error names the
  glob that matches nothing."""
  paths = []
  for pattern in [p for p in patterns.split(",") if p]:
    found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not found:
      raise PreprocessError(f"--raw: no file matches {pattern!r}")
    paths.extend(sorted(found))
  if not paths:
    raise PreprocessError("--raw: no input pattern given")
  return paths


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a source resolved `--raw` to, checked before any pipeline is built."""
  paths: Tuple[str, ...]
  input_format: str  # recorded in the metadata
  headers: Mapping[str, List[str]] = dataclasses.field(default_factory=dict)


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
