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
import threading
import warnings
from typing import Sequence

from hmdn.features import quiet


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


# absl WARNING lines of TensorFlow's that say nothing to a user: a spec's field names
# that are not Python identifiers (Ali-CCP's "101", "121", ...) are the signatures'
# input names as they should be; only tf.function's Python arguments are renamed.
ABSL_NOISE = ("is not a valid tf.function parameter name",)


class _DropMessages(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not any(noise in str(record.msg) for noise in ABSL_NOISE)


def silence_libraries(argv: Sequence[str]) -> None:
  """Call before anything imports TensorFlow (the CLI does it first)."""
  if wants_library_logs(argv):
    return
  logging.getLogger("absl").addFilter(_DropMessages())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  quiet.silence(quiet.LIBRARIES)
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  if "tensorflow" not in sys.modules:
    _import_tensorflow_without_native_banner()
  import tensorflow as tf
  tf.get_logger().setLevel(logging.ERROR)
  tf.autograph.set_verbosity(0)


# What each DirectRunner worker process writes to the stderr it inherits before the
# runner's log service takes its logging over: importing Beam's GCP IO modules warns
# through the root logger (which also gives the root logger Python's default stderr
# handler), then the worker logs that its log handler exists.
BEAM_WORKER_NOISE = ("apitools not found, and bigquery client libraries",
                     "Logging handler created.")


# How long the end of the block waits for stderr writers that outlive it (Beam worker
# processes still shutting down) before it returns; their lines are still forwarded.
_FORWARDER_JOIN_SECONDS = 10.0


def _forward_lines(pipe_fd: int, stderr_fd: int) -> None:
  """Copies each line read from `pipe_fd` to `stderr_fd` as it arrives, except
  `BEAM_WORKER_NOISE`, until every writer has closed the pipe."""
  with os.fdopen(pipe_fd, "rb") as pipe:
    for line in pipe:
      if not any(noise.encode() in line for noise in BEAM_WORKER_NOISE):
        os.write(stderr_fd, line)
  os.close(stderr_fd)


@contextlib.contextmanager
def beam_worker_noise_filtered(argv: Sequence[str]):
  """Runs the block with this process's stderr (fd 2, which the Beam workers started
  inside the block inherit) going through a pipe whose lines a thread writes on to the
  real stderr as they come, except `BEAM_WORKER_NOISE`: nothing else is dropped or
  held back (a warning in a long job shows when it happens). With `--verbosity`
  stderr is left alone."""
  if wants_library_logs(argv):
    yield
    return
  sys.stderr.flush()
  real_stderr = os.dup(2)
  pipe_read, pipe_write = os.pipe()
  forwarder = threading.Thread(target=_forward_lines,
                               args=(pipe_read, os.dup(real_stderr)),
                               name="stderr-filter", daemon=True)
  forwarder.start()
  os.dup2(pipe_write, 2)
  os.close(pipe_write)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(real_stderr, 2)  # closes this process's last write end of the pipe
    os.close(real_stderr)
    forwarder.join(_FORWARDER_JOIN_SECONDS)
