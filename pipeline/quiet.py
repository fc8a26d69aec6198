"""Library noise off by default, so `hmdn` prints its own progress and results only.

TensorFlow writes start-up lines from C++ before its log level is read (oneDNN, CUDA
probing on a machine without a GPU), Keras and Beam warn through Python logging and
`warnings`. `silence_libraries` turns these off on purpose, at their source; any
`--verbosity` flag (absl's) brings every one of them back. Beam's worker processes are
not ours to configure before they log: `beam_worker_noise_filtered` drops their known
start-up lines from the stderr they inherit.
"""
import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Sequence

LIBRARIES = ("tensorflow", "tf_keras", "keras", "absl", "apache_beam", "h5py",
             "tensorflow_datasets", "tensorflow_recommenders")


def wants_library_logs(argv: Sequence[str]) -> bool:
  """True when the user asked for absl's verbosity (`--verbosity=N`, `-v N`)."""
  return any(a == "-v" or a.startswith(("--verbosity", "-v=", "--v="))
             for a in argv[1:])


def _import_tensorflow_without_native_banner() -> None:
  """Imports TensorFlow with the process's stderr (fd 2) sent to a temporary file,
  which is replayed if the import fails: a broken install still says why."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def silence_libraries(argv: Sequence[str]) -> None:
  """Call before anything imports TensorFlow (the CLI does it first)."""
  if wants_library_logs(argv):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  for module in LIBRARIES:
    warnings.filterwarnings("ignore", module=module)
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  if "tensorflow" not in sys.modules:
    _import_tensorflow_without_native_banner()
  import tensorflow as tf
  tf.get_logger().setLevel(logging.ERROR)
  tf.autograph.set_verbosity(0)
  for name in LIBRARIES:
    logging.getLogger(name).setLevel(logging.ERROR)


# What each DirectRunner worker process writes to the stderr it inherits before the
# runner's log service takes its logging over: importing Beam's GCP IO modules warns
# through the root logger (which also gives the root logger Python's default stderr
# handler), then the worker logs that its log handler exists.
BEAM_WORKER_NOISE = ("apitools not found, and bigquery client libraries",
                     "Logging handler created.")


@contextlib.contextmanager
def beam_worker_noise_filtered(argv: Sequence[str]):
  """Runs the block with this process's stderr (fd 2, which the Beam workers started
  inside the block inherit) sent to a temporary file, then writes every line of it
  back except `BEAM_WORKER_NOISE`: nothing else is dropped, errors included (they
  appear when the block ends). With `--verbosity` stderr is left alone."""
  if wants_library_logs(argv):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines(True):
        if not any(noise in line for noise in BEAM_WORKER_NOISE):
          sys.stderr.write(line)
      sys.stderr.flush()
