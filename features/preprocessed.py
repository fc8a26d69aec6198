"""The preprocessed data directory: its layout and its readers, in one class.

`hmdn preprocess` (beam_jobs/) writes a data directory; the trainer, evaluation, export,
the CLI, the benchmarks and the tests read it. Both sides take every path from
`PreprocessedData`, so the layout is spelled once, here, and reading the data never
imports the Beam job (the pattern of TFT's `TFTransformOutput`):

  spec.yaml                   the spec the data was written with
  train/part-*.tfrecord.gz    eval/part-*.tfrecord.gz   gzip tf.Example shards
  vocab/<field>.txt           one value a line, most frequent first
  tables/<field>.txt          count_bucket and mode fields: `value<TAB>bucket` or
                              `value<TAB>mode`, both escaped (SavedModel assets)
  dead_letter/rows-*.jsonl    every rejected row with its reason
  tfds/                       the splits as a TFDS dataset (optional)
  stats.json                  per-distribution rows/CTR, numeric moments, distinct values
  metadata.json               counters; written last: its presence means "complete"

Files are read through `tf.io.gfile` (local, gs://, hdfs://), lazily, and cached.
The same class stages and publishes a run (`staging`, `publish_from`), so that a
directory is complete or absent: the job writes into `<data_dir>/_staging-<id>/` (the
same layout) and the outputs move into place only when it succeeded, the metadata last.
TensorFlow is imported inside the methods that touch files: importing `features` stays
TensorFlow-free.
"""
import errno
import functools
import json
import os
import shutil
import uuid
from typing import Any, Dict, List

from hmdn.features import fileio
from hmdn.features import spec as spec_lib

TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)


# Vocabulary and table files hold one value a line (tables: `value<TAB>entry`), read
# by TensorFlow's text-file initializers, which split on newlines and tabs. Values are
# written escaped (backslash, newline, tab, carriage return) and the model escapes its
# inputs the same way before the lookup (`escape_tensor`), so any string round-trips.
_ESCAPES = (("\\", "\\\\"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r"))


def escape_value(value: str) -> str:
  """A value as written in a vocabulary or table file."""
  for raw, escaped in _ESCAPES:
    value = value.replace(raw, escaped)
  return value


def unescape_value(line: str) -> str:
  """The inverse of `escape_value` (for readers of the files)."""
  out, i = [], 0
  table = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
  while i < len(line):
    if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in table:
      out.append(table[line[i + 1]])
      i += 2
    else:
      out.append(line[i])
      i += 1
  return "".join(out)


def holds_escapes(path: str) -> bool:
  """Whether a vocabulary or table file holds any escaped value (any backslash).

  When it holds none, no raw input that escaping would change (one holding a backslash,
  newline, tab or carriage return) can equal a line, and every other input is its own
  escape: looking inputs up unescaped then finds exactly what `escape_tensor` would,
  and the model skips four regex replacements per field and step."""
  import tensorflow as tf
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(1 << 20)
      if not chunk:
        return False
      if b"\\" in chunk:
        return True


def escape_tensor(values):
  """`escape_value` in TensorFlow, for string tensors looked up in those files."""
  import tensorflow as tf
  for raw, escaped in _ESCAPES:
    values = tf.strings.regex_replace(values, raw.replace("\\", "\\\\"),
                                      escaped.replace("\\", "\\\\"))
  return values


def unescape_tensor(values):
  """`unescape_value` in TensorFlow, for the escaped values a
  mode table yields: split at escaped backslashes (left to right, as the escapes were
  written), turn the other escapes back into their characters, rejoin with "\\".

  Each piece is joined with a leading "\\" that is then cut from the front:
  `reduce_join` of a ragged row drops its leading empty strings (TF 2.x)."""
  import tensorflow as tf
  pieces = tf.strings.split(values, sep="\\\\")

  def unescape(x):
    for escaped, raw in (("\\\\n", "\n"), ("\\\\t", "\t"), ("\\\\r", "\r")):
      x = tf.strings.regex_replace(x, escaped, raw)
    return "\\" + x

  joined = tf.strings.reduce_join(tf.ragged.map_flat_values(unescape, pieces), axis=-1)
  return tf.strings.regex_replace(joined, "^\\\\", "", replace_global=False)


class IncompleteDataError(ValueError):
  """The directory is not a complete output of `hmdn preprocess`."""


def _join(*parts: str) -> str:
  return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])


def _is_local(path: str) -> bool:
  return "://" not in path


def _files_under(path: str) -> List[str]:
  """Every file below a directory (recursively), sorted."""
  import tensorflow as tf  # features stays TensorFlow-free on import
  if _is_local(path):
    return sorted(os.path.join(root, f) for root, _, files in os.walk(path)
                  for f in files)
  return sorted(_join(root, f) for root, _, files in tf.io.gfile.walk(path)
                for f in files)


def _rmtree(path: str, attempts: int = 3) -> None:
  """`shutil.rmtree`, tried again when a file appears while it runs (a Beam worker's
  late progress file in the scratch directory)."""
  for attempt in range(attempts):
    try:
      shutil.rmtree(path)
      return
    except OSError as e:
      if e.errno != errno.ENOTEMPTY or attempt == attempts - 1:
        raise


def delete_tree(path: str) -> None:
  """Removes a file or a directory and everything below it; nothing if absent."""
  import tensorflow as tf  # features stays TensorFlow-free on import
  if _is_local(path):
    if os.path.isdir(path) and not os.path.islink(path):
      _rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    return
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  elif tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


class PreprocessedData:
  """One preprocessing output directory (`data_dir`): where each part lives, and its
  typed readers. Readers check the completion marker first."""

  SPEC_FILE = "spec.yaml"
  METADATA_FILE = "metadata.json"  # written last: the completion marker
  STATS_FILE = "stats.json"
  VOCAB_DIR = "vocab"
  TABLES_DIR = "tables"
  DEAD_LETTER_DIR = "dead_letter"
  TFDS_DIR = "tfds"
  SCRATCH_DIR = "_stats"  # the job's intermediate outputs, removed when it ends
  STAGING_PREFIX = "_staging-"  # a run writes into <data_dir>/_staging-<id>/, then publishes
  BEAM_TEMP_PREFIX = "beam-temp-"  # Beam's file sinks write beside their outputs
  SHARD_PREFIX = "part"
  SHARD_SUFFIX = ".tfrecord.gz"
  DEAD_LETTER_PREFIX = "rows"
  TEXT_SUFFIX = ".txt"
  # Everything a run writes (cleared before a new run writes again).
  OUTPUT_DIRS = (TRAIN, EVAL, VOCAB_DIR, TABLES_DIR, DEAD_LETTER_DIR, TFDS_DIR,
                 SCRATCH_DIR)
  OUTPUT_FILES = (METADATA_FILE, STATS_FILE)

  def __init__(self, data_dir: str):
    if not data_dir:
      raise ValueError("a data directory path is needed (--data_dir)")
    self.data_dir = data_dir.rstrip("/") or "/"

  def __repr__(self) -> str:
    return f"PreprocessedData({self.data_dir!r})"

  @classmethod
  def is_output_name(cls, name: str) -> bool:
    """An entry of a data directory that a run of `hmdn preprocess` writes."""
    return name in cls.OUTPUT_DIRS + cls.OUTPUT_FILES + (cls.SPEC_FILE,) or name.startswith(
        (cls.STAGING_PREFIX, cls.BEAM_TEMP_PREFIX))

  # --- Paths ------------------------------------------------------------------------
  def path(self, *parts: str) -> str:
    return _join(self.data_dir, *parts)

  @property
  def spec_path(self) -> str:
    return self.path(self.SPEC_FILE)

  @property
  def metadata_path(self) -> str:
    return self.path(self.METADATA_FILE)

  @property
  def stats_path(self) -> str:
    return self.path(self.STATS_FILE)

  @property
  def vocab_dir(self) -> str:
    return self.path(self.VOCAB_DIR)

  @property
  def tables_dir(self) -> str:
    return self.path(self.TABLES_DIR)

  @property
  def tfds_dir(self) -> str:
    return self.path(self.TFDS_DIR)

  @property
  def scratch_dir(self) -> str:
    return self.path(self.SCRATCH_DIR)

  @property
  def dead_letter_prefix(self) -> str:
    return self.path(self.DEAD_LETTER_DIR, self.DEAD_LETTER_PREFIX)

  def vocab_path(self, field: str) -> str:
    return _join(self.vocab_dir, field + self.TEXT_SUFFIX)

  def table_path(self, field: str) -> str:
    return _join(self.tables_dir, field + self.TEXT_SUFFIX)

  def read_table(self, field: str) -> Dict[str, str]:
    """{source value: table value} of a derived field's table, unescaped: what the
    model's lookup holds (for inspecting a run and for tests)."""
    import tensorflow as tf
    with tf.io.gfile.GFile(self.table_path(field)) as f:
      return dict(tuple(map(unescape_value, line.rstrip("\n").split("\t")))
                  for line in f if line.strip())

  def table_relpath(self, field: str) -> str:
    """A table's path relative to the data directory (recorded in the metadata)."""
    return _join(self.TABLES_DIR, field + self.TEXT_SUFFIX)

  @staticmethod
  def _check_split(split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

  def split_prefix(self, split: str) -> str:
    """`<data_dir>/<split>/part`: the Beam writer appends `-SSSSS-of-NNNNN` + suffix."""
    self._check_split(split)
    return self.path(split, self.SHARD_PREFIX)

  def split_pattern(self, split: str) -> str:
    return f"{self.split_prefix(split)}-*{self.SHARD_SUFFIX}"

  def split_files(self, split: str) -> List[str]:
    """The split's TFRecord shards, sorted; an error if there are none."""
    import tensorflow as tf
    pattern = self.split_pattern(split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
      raise FileNotFoundError(f"no TFRecords match {pattern}; run `hmdn preprocess` "
                              "first")
    return files

  # --- Readers ----------------------------------------------------------------------
  def is_complete(self) -> bool:
    import tensorflow as tf
    return tf.io.gfile.exists(self.metadata_path)

  def check_complete(self) -> "PreprocessedData":
    if not self.is_complete():
      raise IncompleteDataError(
          f"{self.data_dir}: not a complete preprocessing output (no "
          f"{self.METADATA_FILE}); run `hmdn preprocess` first")
    return self

  @functools.cached_property
  def metadata(self) -> Dict[str, Any]:
    """The job's metadata (counters, raw inputs, vocabulary sizes)."""
    self.check_complete()
    return json.loads(spec_lib.read_text(self.metadata_path))

  @functools.cached_property
  def stats(self) -> Dict[str, Any]:
    """stats.json: per-distribution statistics and numeric moments."""
    self.check_complete()
    return json.loads(spec_lib.read_text(self.stats_path))

  @functools.cached_property
  def spec(self) -> spec_lib.FeatureSpec:
    """The spec the data was written with."""
    self.check_complete()
    return spec_lib.load_spec(self.spec_path)

  # --- Staging and publishing -------------------------------------------------------
  def staging(self) -> "PreprocessedData":
    """A fresh staging directory of this one, `<data_dir>/_staging-<id>/`."""
    return PreprocessedData(self.path(f"{self.STAGING_PREFIX}{uuid.uuid4().hex[:12]}"))

  def remove_stale(self) -> List[str]:
    """A killed run's leftovers (staging directories, `beam-temp-*` directories at any
    depth); returns what was removed."""
    prefixes = (self.STAGING_PREFIX, self.BEAM_TEMP_PREFIX)
    stale = []
    if _is_local(self.data_dir):
      for root, dirs, _ in os.walk(self.data_dir):
        for d in list(dirs):
          if d.startswith(prefixes):
            stale.append(os.path.join(root, d))
            dirs.remove(d)
    else:
      root = self.data_dir.rstrip("/") + "/"
      for f in _files_under(self.data_dir):
        parts = f[len(root):].split("/")
        for i, part in enumerate(parts[:-1]):
          if part.startswith(prefixes):
            stale.append(root + "/".join(parts[:i + 1]))
            break
      stale = sorted(set(stale))
    for path in stale:
      delete_tree(path)
    return stale

  def clear(self, keep_spec: bool = False) -> None:
    """Removes a previous run's outputs so stale shards never mix with new ones; the
    spec file too, unless `keep_spec` (it is this run's own --spec, replaced at the
    end)."""
    for sub in self.OUTPUT_DIRS:
      delete_tree(self.path(sub))
    for name in self.OUTPUT_FILES:
      delete_tree(self.path(name))
    if not keep_spec:
      delete_tree(self.spec_path)

  def publish_from(self, staging: "PreprocessedData") -> None:
    """Moves the staged outputs into this directory (each directory by one rename
    where the filesystem has one, file by file on object stores); not the metadata."""
    import tensorflow as tf  # features stays TensorFlow-free on import
    names = [n for n in self.OUTPUT_DIRS if n != self.SCRATCH_DIR]
    names += [n for n in self.OUTPUT_FILES if n != self.METADATA_FILE] + [self.SPEC_FILE]
    for name in names:
      src, dst = staging.path(name), self.path(name)
      if _is_local(src):
        if not os.path.lexists(src):
          continue
        if os.path.isdir(dst) and not os.path.islink(dst):
          delete_tree(dst)
        os.replace(src, dst)
        continue
      files = _files_under(src) if tf.io.gfile.isdir(src) else (
          [src] if tf.io.gfile.exists(src) else [])
      if files:
        delete_tree(dst)
        for f in files:
          target = dst + f[len(src):]
          tf.io.gfile.makedirs(os.path.dirname(target))
          tf.io.gfile.rename(f, target, overwrite=True)

  def write_metadata(self, metadata: Dict[str, Any]) -> None:
    """The completion marker, written atomically (a rename, or one object created on
    gs://), so it is never seen half written: call it last."""
    fileio.write_text_atomic(self.metadata_path, json.dumps(metadata, indent=1))

  @property
  def numeric_moments(self) -> Dict[str, Dict[str, float]]:
    return self.stats["numeric"]

  def rows(self, split: str) -> int:
    """Rows the job wrote into a split."""
    self._check_split(split)
    return int(self.metadata["rows_written"][split])


def as_data(data: "str | PreprocessedData") -> PreprocessedData:
  """Accepts a data directory path or a `PreprocessedData`."""
  return data if isinstance(data, PreprocessedData) else PreprocessedData(data)


def _sha256(chunks) -> str:
  import hashlib
  digest = hashlib.sha256()
  for chunk in chunks:
    digest.update(chunk if isinstance(chunk, bytes) else str(chunk).encode("utf-8"))
  return digest.hexdigest()[:16]


def spec_fingerprint(spec: spec_lib.FeatureSpec) -> str:
  """A short hash of a spec's content (not of its file's formatting)."""
  return _sha256([json.dumps(spec.to_dict(), sort_keys=True)])


def fingerprints(data: "str | PreprocessedData") -> Dict[str, str]:
  """Hashes of what a trained model depends on in a data directory: its spec, and the
  vocabulary and lookup-table files that fix every embedding row's meaning."""
  import tensorflow as tf
  data = as_data(data).check_complete()

  def files_hash(directory: str) -> str:
    names = sorted(tf.io.gfile.glob(_join(directory, "*" + PreprocessedData.TEXT_SUFFIX)))
    chunks = []
    for path in names:
      with tf.io.gfile.GFile(path, "rb") as f:
        chunks += [path.rsplit("/", 1)[-1], b"\0", f.read(), b"\0"]
    return _sha256(chunks)

  return {"spec": spec_fingerprint(data.spec),
          "vocabularies": files_hash(data.vocab_dir),
          "tables": files_hash(data.tables_dir)}
