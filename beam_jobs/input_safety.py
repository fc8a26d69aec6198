"""Checks made before anything is read or touched: the inputs lie outside what the job
clears, and the split flags fit the spec."""
import os
import re

from hmdn.beam_jobs import sources
from hmdn.beam_jobs.config import PreprocessConfig, PreprocessError
from hmdn.beam_jobs.sources import base
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData


def _inside(path: str, root: str) -> bool:
  root = root.rstrip("/")
  return path == root or path.startswith(root + "/")


def check_raw_outside_outputs(raw: str, data: PreprocessedData) -> None:
  """The fixed part of each `--raw` glob (up to its first wildcard) must not lie in the
  data directory: found before a header is read, so a glob pointing into the outputs
  fails for the right reason."""
  out = base.path_key(data.data_dir)
  for pattern in [p for p in raw.split(",") if p]:
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if fixed != pattern:  # a glob: its directory part
      fixed = fixed.rsplit("/", 1)[0] if "/" in fixed else "."
    if fixed and _inside(base.path_key(fixed), out):
      raise PreprocessError(
          f"--raw {pattern} points inside the output directory {data.data_dir}, whose "
          "contents the job replaces; write the output elsewhere or move the input")


def check_inputs_outside_outputs(inputs: sources.Inputs, data: PreprocessedData,
                                 spec_path: str = "") -> None:
  """Inputs are never deleted or overwritten: a `--raw` file inside the data directory,
  a folder the source reads that holds the data directory or lies in it, or a spec
  file among the outputs the job clears is a PreprocessError naming both paths. Local
  paths are compared resolved (symlinks, `..`)."""
  out = base.path_key(data.data_dir)
  for path in inputs.paths:
    key = base.path_key(path)
    if _inside(key, out):
      raise PreprocessError(
          f"--raw file {path} is inside the output directory {data.data_dir}, whose "
          "contents the job replaces; write the output elsewhere or move the input")
    if _inside(out, key):
      raise PreprocessError(f"the output directory {data.data_dir} is the --raw file "
                            f"{path}")
  for folder in inputs.folders:
    key = base.path_key(folder)
    if _inside(key, out) or _inside(out, key):
      raise PreprocessError(f"--raw folder {folder} and the output directory "
                            f"{data.data_dir} overlap; write the output elsewhere")
  if spec_path and ("/" in spec_path or os.path.exists(spec_path)):
    key = base.path_key(spec_path)
    cleared = [data.path(n) for n in data.OUTPUT_DIRS + data.OUTPUT_FILES]
    for path in cleared:
      if _inside(key, base.path_key(path)):
        raise PreprocessError(f"--spec {spec_path} is inside {path}, which the job "
                              "clears; copy the spec elsewhere")


def check_split_flags(config: PreprocessConfig, spec: spec_lib.FeatureSpec) -> None:
  if not config.split_time_field:
    if config.split_time_cutoff is not None or config.split_time_quantile is not None:
      raise PreprocessError("--split_time_cutoff/--split_time_quantile need "
                            "--split_time_field")
    return
  if config.split_time_field not in spec.names:
    raise PreprocessError(f"--split_time_field {config.split_time_field!r} is not a "
                          f"field of {spec.source}")
  if spec[config.split_time_field].kind != spec_lib.NUMERIC:
    raise PreprocessError(f"--split_time_field {config.split_time_field!r} must be "
                          "numeric (e.g. a unix time)")
  if config.split_time_cutoff is not None and config.split_time_quantile is not None:
    raise PreprocessError("give --split_time_cutoff or --split_time_quantile, not both")
  q = config.split_time_quantile
  if q is not None and not 0.0 < q < 1.0:
    raise PreprocessError(f"--split_time_quantile must be in (0, 1), got {q}")
