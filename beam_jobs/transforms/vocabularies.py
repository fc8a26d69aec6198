"""Vocabularies: categorical values counted on the training split, one file a field."""
import collections
import itertools
from typing import Any, Iterable, List, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from hmdn.beam_jobs.transforms.batches import Batch
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData, escape_value


def _values(feature: spec_lib.Feature, value: Any) -> List[str]:
  return list(value) if feature.kind == spec_lib.MULTI_CATEGORICAL else [value]


def _column_values(feature: spec_lib.Feature, column: Sequence) -> Iterable:
  """A batch's values of a field, each value of a list on its own."""
  if feature.kind == spec_lib.MULTI_CATEGORICAL:
    return list(itertools.chain.from_iterable(column))
  return column


class _MergeCountsFn(beam.CombineFn):
  """A field's values (a batch's column, counted into the accumulator by
  Counter.update's C loop) or partial Counters -> the field's Counter."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, acc, values):
    acc.update(values)  # a column: counted in C; a Counter: merged
    return acc

  def merge_accumulators(self, accs):
    accs = iter(accs)
    out = next(accs, collections.Counter())
    for acc in accs:
      out.update(acc)
    return out

  def extract_output(self, acc):
    return acc


class WriteVocabularyFn(beam.DoFn):
  """(field, Counter) -> the vocabulary file of the values >= vocab_min_count, most
  frequent first, one escaped value a line (`escape_value`: a tab or newline in an id
  cannot split it); yields (field, vocabulary size)."""

  def __init__(self, data: PreprocessedData, min_count: Mapping[str, int]):
    self._data = data
    self._min_count = dict(min_count)

  def process(self, element):
    field, counts = element
    keep = self._min_count[field]
    ordered = sorted(((v, c) for v, c in counts.items() if c >= keep),
                     key=lambda vc: (-vc[1], vc[0]))
    with FileSystems.create(self._data.vocab_path(field)) as f:
      f.write("".join(f"{escape_value(v)}\n" for v, _ in ordered).encode("utf-8"))
    yield field, len(ordered)


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def ComputeVocabularies(train_batches, spec, data: PreprocessedData):
  """Counts categorical values in the training split; keeps those >= vocab_min_count.

  Counts per batch (a Counter of each column), merges per field, writes one
  `data.vocab_path(field)` per vocabulary field and returns (field, vocab size) pairs
  and (field, distinct values) pairs, the latter counted before the threshold. A
  field's vocabulary is one file, so its counts meet on one worker (as they did with a
  GroupByKey per field).
  """
  fields = spec.vocabulary_fields
  min_count = {f.name: f.vocab_min_count for f in fields}
  counts = (train_batches
            | "Columns" >> beam.FlatMap(
                lambda b: [(f.name, _column_values(f, b[1][f.name])) for f in fields])
            | "CountValues" >> beam.CombinePerKey(_MergeCountsFn()))
  sizes = counts | "WriteVocab" >> beam.ParDo(WriteVocabularyFn(data, min_count))
  distinct = counts | "CountDistinct" >> beam.MapTuple(lambda field, c: (field, len(c)))
  return sizes, distinct
