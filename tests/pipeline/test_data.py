"""The training input: full shuffled batches streamed from the files or held in memory
(`cache`: each epoch a permutation of the split), parsed like the evaluation input."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from features.preprocessed import TRAIN, PreprocessedData
from pipeline import data

BATCH = 64


def _records(n):
  return [f"r{i:05d}".encode() for i in range(n)]


def test_cached_epochs_are_permutations_of_the_split():
  records = _records(1000)  # 15 full batches of 64 per epoch, 40 records dropped
  batches = [b.numpy().tolist() for b in data._cached_epochs(
      tf.data.Dataset.from_tensor_slices(records), BATCH, seed=3).take(30)]
  assert all(len(b) == BATCH for b in batches)
  first, second = sum(batches[:15], []), sum(batches[15:], [])
  for epoch in (first, second):
    assert len(set(epoch)) == len(epoch) == 15 * BATCH  # no record twice in an epoch
    assert set(epoch) <= set(records)
  assert first != second and first != records[:len(first)]  # reshuffled every epoch


@pytest.mark.parametrize("cache", [False, True])
def test_training_batches_parse_like_evaluation(planted_data_dir, cache):
  files = PreprocessedData(planted_data_dir)
  spec = files.spec
  reference, _ = next(iter(data.make_dataset(files, TRAIN, spec, BATCH,
                                             training=False)))
  ds = data.make_dataset(files, TRAIN, spec, BATCH, training=True, seed=0, cache=cache)
  assert not ds.options().deterministic
  steps = files.rows(TRAIN) // BATCH
  labels = []
  for features, label in ds.take(steps):
    assert set(features) == set(reference)
    for name, value in features.items():
      assert value.dtype == reference[name].dtype and value.shape[0] == BATCH, name
    labels.append(label.numpy())
  labels = np.concatenate(labels)
  assert set(np.unique(labels)) <= {0, 1}
  if cache:
    # One epoch of a permutation: every record once, but the dropped remainder.
    all_labels = np.concatenate([l.numpy() for _, l in data.make_dataset(
        files, TRAIN, spec, 4096, training=False)])
    remainder = len(all_labels) - len(labels)
    assert 0 <= remainder < BATCH
    assert all_labels.sum() - remainder <= labels.sum() <= all_labels.sum()


def _rows(features, label):
  """Each example of a parsed batch as a hashable tuple of its values."""
  columns = [label.numpy().tolist()] + [
      [str(v) for v in features[name].numpy().tolist()] for name in sorted(features)]
  return list(zip(*columns))


def test_files_are_read_whole_in_order_for_eval_and_once_per_training_epoch(
    planted_data_dir):
  """Readers hand the interleave blocks of records (READ_BLOCK_RECORDS): evaluation
  still sees every record once, in order (this split is one shard), and a streamed
  training epoch no record more often than the split holds it."""
  files = PreprocessedData(planted_data_dir)
  spec = files.spec
  expected = []
  for path in files.split_files(TRAIN):
    serialized = list(tf.data.TFRecordDataset(path, compression_type="GZIP"))
    parsed = data.split_label(data.parse_batch(tf.stack(serialized), spec,
                                               for_serving=True, with_label=True), spec)
    expected += _rows(*parsed)
  assert len(expected) > 3 * data.READ_BLOCK_RECORDS  # several blocks per file
  evaluated = sum((_rows(f, l) for f, l in data.make_dataset(
      files, TRAIN, spec, BATCH, training=False)), [])
  assert evaluated == expected
  epoch = sum((_rows(f, l) for f, l in data.make_dataset(
      files, TRAIN, spec, BATCH, training=True, seed=1).take(len(expected) // BATCH)),
      [])
  assert len(epoch) == len(expected) // BATCH * BATCH
  assert not collections.Counter(epoch) - collections.Counter(expected)
