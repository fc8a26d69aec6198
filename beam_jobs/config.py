"""The preprocessing job's configuration, without Beam: the CLI builds its flags from it.

Each `PreprocessConfig` field carries its flag help, choices and bounds as dataclass
field metadata (`features.options.option`), so a default or a rule is stated once,
here. The names of the sources and input formats live here too: `beam_jobs/sources/`
registers one reader per source name.
"""
import dataclasses
from typing import Optional

from hmdn.features.options import option, validate

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
  output_dir: str = option(help="Preprocessed data directory to write.", flag="data_dir")
  spec_path: str = option(help="Feature spec YAML (or the name of one in "
                          "features/specs).", flag="spec")
  input_format: str = option(AUTO, "Raw format of the generic source: csv, jsonl or "
                             "auto (by file extension).", INPUT_FORMATS)
  delimiter: str = option(",", "CSV delimiter.")
  eval_fraction: float = option(0.2, "Share of rows in the eval split (both splits need "
                                "rows).", above=0, below=1)
  split_key: str = option("", "Field whose hash decides the split (default: the whole "
                          "row).")
  direct_num_workers: int = option(2, "Beam DirectRunner worker processes.", minimum=1)
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
                                                "--eval_fraction).", above=0,
                                                below=1)
  tfds: bool = option(True, "Also write the splits as a TFDS dataset "
                      "(tfds.builder_from_directory); --notfds skips it.")
  overwrite: bool = option(False, "Replace a complete data directory of an earlier "
                           "`hmdn preprocess`; without it such a directory is refused. A "
                           "directory hmdn did not write is refused with or without it.")

  def validate(self) -> "PreprocessConfig":
    """The declared rules (`features.options.validate`), then the delimiter's, before
    anything is read or cleared; raises PreprocessError naming the flag and the value."""
    validate(self, PreprocessError)
    if len(self.delimiter) != 1 or self.delimiter in ('"', "\n", "\r"):
      raise PreprocessError(f"--delimiter={self.delimiter!r}: expected one character, "
                            "not a quote or a line break")
    if self.split_key and self.split_time_field:
      raise PreprocessError(f"--split_key={self.split_key} and --split_time_field="
                            f"{self.split_time_field} contradict: a split is by hash of a "
                            "key or by time, not both")
    return self
