"""The training input: full shuffled batches streamed from the files or held in memory
(`cache`: each epoch a permutation of the split), parsed like the evaluation input."""
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
