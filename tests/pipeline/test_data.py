"""The training input: full shuffled batches streamed from the files (windows of
consecutive records permuted) or held in memory (`cache`: each epoch a permutation of
the split), parsed like the evaluation input."""
import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.preprocessed import TRAIN, PreprocessedData
from hmdn.pipeline import data

BATCH = 64


def _records(n):
  return [f"r{i:05d}".encode() for i in range(n)]


def test_cached_epochs_are_permutations_of_the_split():
  records = _records(1000)  # 15 full batches of 64 per epoch, 40 records dropped
  blocks = tf.data.Dataset.from_tensor_slices(records).batch(7)  # as files are read
  batches = [b.numpy().tolist() for b in data._cached_epochs(
      blocks, BATCH, seed=3).take(30)]
  assert all(len(b) == BATCH for b in batches)
  first, second = sum(batches[:15], []), sum(batches[15:], [])
  for epoch in (first, second):
    assert len(set(epoch)) == len(epoch) == 15 * BATCH  # no record twice in an epoch
    assert set(epoch) <= set(records)
  assert first != second and first != records[:len(first)]  # reshuffled every epoch


def _windowed(records, window, seed, batches, block=7):
  blocks = tf.data.Dataset.from_tensor_slices(records).batch(block)
  return [b.numpy().tolist() for b in data.shuffled_windows(
      blocks, BATCH, window, seed).take(batches)]


def test_shuffled_windows_permute_each_window_of_each_epoch():
  records = _records(350)  # windows of 100: 3 full and one of 50 per epoch
  stream = sum(_windowed(records, 100, seed=5, batches=21), [])  # 1344 records
  assert len(stream) == 21 * BATCH
  bounds = [0, 100, 200, 300, 350]
  windows = []
  for epoch in range(3):
    for start, end in zip(bounds, bounds[1:]):
      at = epoch * 350
      got = stream[at + start:at + end]
      if len(got) < end - start:  # the stream ends inside this window
        assert set(got) <= set(records[start:end]) and len(set(got)) == len(got)
        break
      assert sorted(got) == records[start:end]  # a permutation of its own window
      windows.append(got)
  assert all(w != sorted(w) for w in windows)  # actually permuted
  assert stream[:350] != stream[350:700]  # a new order each epoch
  assert stream == sum(_windowed(records, 100, seed=5, batches=21), [])  # seeded
  assert stream != sum(_windowed(records, 100, seed=6, batches=21), [])


@pytest.mark.parametrize("window", [1, 64, 10_000])
def test_shuffled_windows_keep_every_record_whatever_the_window(window):
  records = _records(3 * BATCH + 5)
  stream = sum(_windowed(records, window, seed=0, batches=3, block=10), [])
  assert set(stream) <= set(records) and len(set(stream)) == len(stream) == 3 * BATCH
  if window == 1:
    assert stream == records[:3 * BATCH]  # nothing to permute: the read order
  if window >= len(records):
    assert stream != records[:3 * BATCH]


def test_shuffle_window_must_be_positive(planted_data_dir):
  files = PreprocessedData(planted_data_dir)
  with pytest.raises(ValueError, match="shuffle_window=0"):
    data.make_dataset(files, TRAIN, files.spec, BATCH, training=True, shuffle_window=0)


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


@pytest.mark.parametrize("cache", [False, True])
def test_skipped_batches_continue_the_stream_across_epochs(planted_data_dir, cache):
  """A resumed run's input (`skip_batches`) gives exactly the batches an uninterrupted
  run reads after that many: the rest of the epoch, then the next epochs in their own
  shuffle order (the input was rebuilt from its first batch before)."""
  files = PreprocessedData(planted_data_dir)
  steps = files.rows(TRAIN) // BATCH
  skip = steps + steps // 2  # mid-way through the second epoch

  def labels(skip_batches, count):
    ds = data.make_dataset(files, TRAIN, files.spec, BATCH, training=True, seed=3,
                           cache=cache, deterministic=True, skip_batches=skip_batches)
    return [label.numpy() for _, label in ds.take(count)]

  whole = labels(0, skip + steps)
  resumed = labels(skip, steps)
  np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[skip:]))
  assert not np.array_equal(np.stack(labels(0, steps)), np.stack(resumed))


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


def test_deterministic_batches_do_not_depend_on_how_the_shards_are_numbered(
    planted_data_dir, tmp_path):
  """The Beam job writes the same shards run to run but may number them the other way
  round: a deterministic run reads them in the order of their content."""
  import shutil
  (original,) = data.files_of(planted_data_dir, TRAIN)
  records = [r.numpy() for r in tf.data.TFRecordDataset(original, compression_type="GZIP")]
  halves = [records[:len(records) // 2], records[len(records) // 2:]]
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  copies = []
  for order in ((0, 1), (1, 0)):  # the same two shards, numbered both ways
    copy = str(tmp_path / f"data{order[0]}")
    shutil.copytree(planted_data_dir, copy)
    os.remove(data.files_of(copy, TRAIN)[0])
    for number, half in enumerate(order):
      name = os.path.join(os.path.dirname(original.replace(planted_data_dir, copy)),
                          f"part-{number:05d}-of-00002.tfrecord.gz")
      with tf.io.TFRecordWriter(name, options) as writer:
        for record in halves[half]:
          writer.write(record)
    assert len(data.files_of(copy, TRAIN)) == 2
    copies.append(copy)
  spec = PreprocessedData(planted_data_dir).spec

  def labels(data_dir):
    ds = data.make_dataset(data_dir, TRAIN, spec, 64, training=True, seed=3,
                           deterministic=True)
    return [batch[1].numpy().tolist() for batch in ds.take(30)]

  assert labels(copies[0]) == labels(copies[1])
