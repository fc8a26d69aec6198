"""A preprocessed split read back (not a test module): the one reader the Beam job's
tests share, through the trainer's parser."""
from typing import Any, Dict, List, Tuple

import tensorflow as tf

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData
from hmdn.pipeline import data as data_lib


def serialized_records(out: str, split: str) -> List[bytes]:
  """The split's serialized tf.Examples, in the order of its files (none: [])."""
  files = sorted(tf.io.gfile.glob(PreprocessedData(out).split_pattern(split)))
  return [s.numpy() for s in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def parsed_rows(serialized: List[bytes], spec: spec_lib.FeatureSpec) -> List[Dict[str, Any]]:
  """Serialized examples as {field: value}: a str (categorical), a list of str
  (multi-categorical, padding dropped) or a float."""
  if not serialized:
    return []
  parsed = {k: v.numpy() for k, v in data_lib.parse_batch(tf.constant(serialized),
                                                          spec).items()}
  rows = []
  for i in range(len(serialized)):
    row = {}
    for f in spec.features:
      v = parsed[f.name][i]
      if f.kind in (spec_lib.MULTI_CATEGORICAL, spec_lib.SEQUENCE):
        row[f.name] = [x.decode() for x in v if x]
      elif f.kind == spec_lib.CATEGORICAL:
        row[f.name] = v.decode()
      else:
        row[f.name] = float(v)
    rows.append(row)
  return rows


def read_split(out: str, spec: spec_lib.FeatureSpec,
               split: str) -> Tuple[List[Dict[str, Any]], List[bytes]]:
  """(rows, serialized records) of a split."""
  serialized = serialized_records(out, split)
  return parsed_rows(serialized, spec), serialized
