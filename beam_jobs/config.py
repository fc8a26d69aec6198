"""The preprocessing job's configuration, without Beam: the CLI builds its flags from it.

Each `PreprocessConfig` field carries its flag help (and its choices) as dataclass field
metadata, so a default or an enum is stated once, here. The names of the sources and
input formats live here too: `beam_jobs/sources/` registers one reader per source name.
"""
import dataclasses
from typing import Optional

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


def _field(default=dataclasses.MISSING, help: str = "", choices=None):  # noqa: A002
  metadata = {"help": help}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class PreprocessConfig:
  """What `hmdn preprocess` reads, how it splits, and where it writes."""
  raw: str = _field(help="Raw log file glob(s), comma-separated (MovieLens: the folder "
                    "holding u.data, u.user, u.item).")
  output_dir: str = _field(help="Preprocessed data directory to write.")
  spec_path: str = _field(help="Feature spec YAML (or the name of one in "
                          "features/specs).")
  input_format: str = _field(AUTO, "Raw format of the generic source: csv, jsonl or "
                             "auto (by file extension).", INPUT_FORMATS)
  delimiter: str = _field(",", "CSV delimiter.")
  eval_fraction: float = _field(0.2, "Share of rows in the eval split.")
  split_key: str = _field("", "Field whose hash decides the split (default: the whole "
                          "row).")
  direct_num_workers: int = _field(2, "Beam DirectRunner worker processes.")
  source: str = _field(GENERIC, "Reader of --raw (beam_jobs/sources/): generic CSV/JSONL, "
                       "Ali-CCP's raw skeleton + common-features files, or a MovieLens "
                       "ml-100k folder.", SOURCES)
  # Split by time instead: eval = rows with split_time_field >= the cutoff, given or
  # taken at a quantile of the field (default: 1 - eval_fraction).
  split_time_field: str = _field("", "Split by this numeric time field instead of by "
                                 "hash: eval = rows at or after the cutoff.")
  split_time_cutoff: Optional[float] = _field(None, "Time split: the first eval time.")
  split_time_quantile: Optional[float] = _field(None, "Time split: the cutoff is this "
                                                "quantile of the field (default 1 - "
                                                "--eval_fraction).")
  tfds: bool = _field(True, "Also write the splits as a TFDS dataset "
                      "(tfds.builder_from_directory); --notfds skips it.")
