"""Ordinary faults as one line: what the CLI prints (and exits 2 with) instead of a stack
trace, naming the path or the field.

A full disk, a read-only or foreign output directory, a path that is a file where a
directory is wanted (or the other way round), a truncated checkpoint, memory exhausted,
data that does not fit the model: the user can act on each of these, so each is a
sentence (`describe`); `--debug` shows the traceback. TensorFlow's errors other than
those (internal errors, cancellation) stay tracebacks: they are bugs, not input.
"""
import errno
from typing import Optional, Tuple, Type

import tensorflow as tf

from hmdn.features.fileio import short

# What an OSError's errno means to the user, and what to do about it.
OS_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; write elsewhere or change the permissions",
    errno.EPERM: "operation not permitted; write elsewhere or change the permissions",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or directory",
    errno.ENOMEM: "out of memory",
}
TF_FAULTS: Tuple[Type[BaseException], ...] = (
    tf.errors.DataLossError, tf.errors.ResourceExhaustedError,
    tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
    tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError,
    tf.errors.AlreadyExistsError, tf.errors.OutOfRangeError)
# What the CLI turns into one line (besides its input errors).
FAULTS: Tuple[Type[BaseException], ...] = (OSError, MemoryError) + TF_FAULTS
TF_ADVICE = {
    tf.errors.DataLossError: "the file is truncated or corrupt",
    tf.errors.ResourceExhaustedError: "out of memory or disk; lower --batch_size or the "
                                      "embedding sizes, or free some space",
    tf.errors.PermissionDeniedError: "permission denied",
}
SHOWN_CHARS = 300


def _os_line(error: OSError) -> str:
  path = error.filename or ""
  if error.filename2:
    path = f"{path} -> {error.filename2}"
  reason = OS_REASONS.get(error.errno, error.strerror or str(error))
  return f"{path}: {reason}" if path else reason


def tf_message(error: "tf.errors.OpError") -> str:
  """The line of a TensorFlow error that says what went wrong: not "Graph execution
  error", not the traceback of the op's definition, not the node names."""
  lines = [line for line in (error.message or "").splitlines() if line.strip()]
  for line in lines:
    text = line.strip()
    if line[0].isspace() or text.startswith(("Graph execution error", "Detected at node",
                                             "[[", "File ")):
      continue
    return text[:SHOWN_CHARS]
  return (lines[0].strip() if lines else type(error).__name__)[:SHOWN_CHARS]


def describe(error: BaseException) -> Optional[str]:
  """One line for a fault in `FAULTS`, or None for anything else."""
  if isinstance(error, OSError):
    return _os_line(error)
  if isinstance(error, MemoryError):
    return f"out of memory{': ' + short(str(error)) if str(error) else ''}"
  if isinstance(error, TF_FAULTS):
    message = tf_message(error)
    for kind, advice in TF_ADVICE.items():
      if isinstance(error, kind) and advice not in message:
        return f"{message} ({advice})"
    return message
  return None
