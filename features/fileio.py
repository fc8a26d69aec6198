"""Small file and text helpers every package shares: atomic writes, JSON of numpy
values, JSON objects whose keys are distinct, and a bad value quoted short in an error
message. Beam-free and Keras-free, on `tf.io.gfile` so that the same call writes
locally, to gs:// or to hdfs://."""
import errno
import json
import os
from typing import Any, Dict, List, Tuple

SHOWN_CHARS = 60  # characters of a bad value quoted in an error message


def short(value: Any, limit: int = SHOWN_CHARS) -> str:
  """`repr(value)`, cut to `limit` characters: one huge cell must not flood an error."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


class RepeatedKeyError(ValueError):
  """A JSON object gives a key twice: which value is meant is not known."""


def object_once(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
  """`json.loads(..., object_pairs_hook=object_once)`: an object whose keys are
  distinct, else RepeatedKeyError naming the key (json.loads alone keeps the last)."""
  obj = dict(pairs)
  if len(obj) != len(pairs):
    seen = set()
    key = next(k for k, _ in pairs if k in seen or seen.add(k))
    raise RepeatedKeyError(f"a JSON object gives key {short(key)} "
                           f"{sum(1 for k, _ in pairs if k == key)} times")
  return obj


def jsonable(value: Any) -> Any:
  """`json.dumps(default=...)`: numpy scalars and arrays as numbers and lists (bytes
  decoded as UTF-8), anything else as its text."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if hasattr(value, "tolist"):
    listed = value.tolist()
    if isinstance(listed, bytes):
      return listed.decode("utf-8", errors="replace")
    if isinstance(listed, list):
      return json.loads(json.dumps(listed, default=jsonable))
    return listed
  return str(value)


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `<path>.tmp`, then renames it over `path`: a reader never sees half
  a file, and a failed write leaves no temporary file behind."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top: features stays TF-free on import
  if tf.io.gfile.isdir(path):  # before a temporary file is written beside it
    raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = path + ".tmp"
  try:
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any, indent: int = 1) -> None:
  """`obj` as JSON (numpy values included), written atomically."""
  write_text_atomic(path, json.dumps(obj, indent=indent, default=jsonable))
