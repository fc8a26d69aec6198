"""Helpers shared by the Beam job's tests."""
import pytest


@pytest.fixture(scope="session")
def read_split():
  """read_split(data_dir, spec, split) -> (rows as {field: str or float}, serialized
  records) of a preprocessed split, read back through the trainer's parser."""
  import tensorflow as tf
  from features import spec as spec_lib
  from features.preprocessed import PreprocessedData
  from pipeline import data as data_lib

  def read(out, spec, split):
    files = PreprocessedData(out).split_files(split)
    serialized = [s.numpy() for s in
                  tf.data.TFRecordDataset(files, compression_type="GZIP")]
    parsed = data_lib.parse_batch(tf.constant(serialized), spec)
    rows = [{f.name: (parsed[f.name][i].numpy().decode()
                      if f.kind == spec_lib.CATEGORICAL else float(parsed[f.name][i]))
             for f in spec.features} for i in range(len(serialized))]
    return rows, serialized
  return read
