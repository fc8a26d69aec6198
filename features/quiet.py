"""Library noise silenced at its source: the loggers set to ERROR and the `warnings` of
their modules ignored. One implementation for the CLI (`pipeline/quiet.py`, for the
whole process) and the Beam job (`beam_jobs/preprocess.py`, for the run)."""
import contextlib
import logging
import warnings
from typing import Dict, Sequence

# The libraries the CLI silences for the whole process, and those the Beam job
# silences while it runs (Beam's per-bundle and harness start-up lines, pickling notes).
LIBRARIES = ("tensorflow", "tf_keras", "keras", "absl", "apache_beam", "h5py",
             "tensorflow_datasets", "tensorflow_recommenders")
BEAM_LIBRARIES = ("apache_beam", "google", "tensorflow_datasets")
# Loggers whose ERROR lines repeat, with a worker's traceback, an exception the runner
# raises anyway (then reported in one line): silenced up to CRITICAL.
REPEATED_ERRORS = ("apache_beam.runners.common",)


def silence(libraries: Sequence[str]) -> Dict[str, int]:
  """Sets each library's logger to ERROR and ignores Python warnings from its modules;
  returns the loggers' previous levels (for `restore`)."""
  levels = {}
  for name in libraries:
    logger = logging.getLogger(name)
    levels[name] = logger.level
    logger.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=name)
  for name in REPEATED_ERRORS:
    if name.split(".")[0] in libraries:
      levels[name] = logging.getLogger(name).level
      logging.getLogger(name).setLevel(logging.CRITICAL)
  return levels


def restore(levels: Dict[str, int]) -> None:
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False, libraries: Sequence[str] = BEAM_LIBRARIES):
  """`silence` for the block, the loggers' levels and the warning filters restored at
  its end; nothing when `verbose`."""
  if verbose:
    yield
    return
  with warnings.catch_warnings():
    levels = silence(libraries)
    try:
      yield
    finally:
      restore(levels)
