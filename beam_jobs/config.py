"""The preprocessing job's configuration, without Beam: the CLI builds its flags from it.

Each `PreprocessConfig` field carries its flag help (and its choices) as dataclass field
metadata, so a default or an enum is stated once, here. The names of the sources and
input formats live here too: `beam_jobs/sources/` registers one reader per source name.
"""
import dataclasses
from typing import Optional

from hmdn.features.options import option

# Sources (`--source`): the reader of `--raw`, one module each in beam_jobs/sources/.
GENERIC = "generic"
ALI_CCP_RAW = "ali_ccp_raw"
MOVIELENS = "movielens"
SOURCES = (GENERIC, ALI_CCP_RAW, MOVIELENS)

# Input formats of the generic source (`--input_format`); auto = by file extension.
AUTO = "auto"
CSV = "csv"
JSONL = "jsonl"
INPUT_FORMATS = (AUTO, CSV, JSONL)


class PreprocessError(ValueError):
  """Bad input to the job as a whole (no file, unreadable header): one clear line."""


@dataclasses.dataclass
class PreprocessConfig:
  """What `hmdn preprocess` reads, how it splits, and where it writes."""
  raw: str = option(help="Raw log file glob(s), comma-separated (MovieLens: the folder "
                    "holding u.data, u.user, u.item).")
  output_dir: str = option(help="Preprocessed data directory to write.")
  spec_path: str = option(help="Feature spec YAML (or the name of one in "
                          "features/specs).")
  input_format: str = option(AUTO, "Raw format of the generic source: csv, jsonl or "
                             "auto (by file extension).", INPUT_FORMATS)
  delimiter: str = option(",", "CSV delimiter.")
  eval_fraction: float = option(0.2, "Share of rows in the eval split.")
  split_key: str = option("", "Field whose hash decides the split (default: the whole "
                          "row).")
  direct_num_workers: int = option(2, "Beam DirectRunner worker processes.")
  source: str = option(GENERIC, "Reader of --raw (beam_jobs/sources/): generic CSV/JSONL, "
                       "Ali-CCP's raw skeleton + common-features files, or a MovieLens "
                       "ml-100k folder.", SOURCES)
  # Split by time instead: eval = rows with split_time_field >= the cutoff, given or
  # taken at a quantile of the field (default: 1 - eval_fraction).
  split_time_field: str = option("", "Split by this numeric time field instead of by "
                                 "hash: eval = rows at or after the cutoff.")
  split_time_cutoff: Optional[float] = option(None, "Time split: the first eval time.")
  split_time_quantile: Optional[float] = option(None, "Time split: the cutoff is this "
                                                "quantile of the field (default 1 - "
                                                "--eval_fraction).")
  tfds: bool = option(True, "Also write the splits as a TFDS dataset "
                      "(tfds.builder_from_directory); --notfds skips it.")
  overwrite: bool = option(False, "Replace a complete data directory of an earlier "
                           "`hmdn preprocess`; without it such a directory is refused. A "
                           "directory hmdn did not write is refused with or without it.")

  def validate(self) -> "PreprocessConfig":
    """Range-checks the numeric and enum flags before anything is read or cleared;
    raises PreprocessError naming the flag and the value."""
    def bad(flag, value, expected):
      raise PreprocessError(f"--{flag}: expected {expected}, got {value!r}")

    def number(flag, value):
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        bad(flag, value, "a number")
      if value != value or value in (float("inf"), float("-inf")):
        bad(flag, value, "a finite number")

    for flag in ("raw", "output_dir", "spec_path"):
      if not isinstance(getattr(self, flag), str) or not getattr(self, flag).strip():
        bad(flag, getattr(self, flag), "a non-empty value")
    number("eval_fraction", self.eval_fraction)
    if not 0.0 < self.eval_fraction < 1.0:
      bad("eval_fraction", self.eval_fraction, "a fraction in (0, 1) (both splits "
          "need rows)")
    if (isinstance(self.direct_num_workers, bool)
        or not isinstance(self.direct_num_workers, int) or self.direct_num_workers < 1):
      bad("direct_num_workers", self.direct_num_workers, "an integer >= 1")
    if self.source not in SOURCES:
      bad("source", self.source, f"one of {SOURCES}")
    if self.input_format not in INPUT_FORMATS:
      bad("input_format", self.input_format, f"one of {INPUT_FORMATS}")
    if not isinstance(self.delimiter, str) or len(self.delimiter) != 1:
      bad("delimiter", self.delimiter, "one character")
    if self.delimiter in ('"', "\n", "\r"):
      bad("delimiter", self.delimiter, "a character other than a quote or a line "
          "break")
    if self.split_time_quantile is not None:
      number("split_time_quantile", self.split_time_quantile)
      if not 0.0 < self.split_time_quantile < 1.0:
        bad("split_time_quantile", self.split_time_quantile, "a quantile in (0, 1)")
    if self.split_time_cutoff is not None:
      number("split_time_cutoff", self.split_time_cutoff)
    return self
