"""Statistics for the driver: numeric moments and per-distribution rows and clicks."""
from typing import Any, Dict, Sequence, Tuple

import apache_beam as beam
import numpy as np

from hmdn.beam_jobs.transforms.batches import Batch
from hmdn.features import spec as spec_lib


class _MomentsFn(beam.CombineFn):
  """count, mean and variance of a numeric column, mergeable across workers.

  The accumulator is (count, mean, sum of squared deviations), updated with Welford's
  and Chan's formulas: E[x^2] - E[x]^2 cancels catastrophically for large-offset
  columns (a timestamp's std came out 5x too large).
  """

  def create_accumulator(self):
    return (0, 0.0, 0.0)

  def add_input(self, acc, x):
    n, mean, m2 = acc
    n += 1
    delta = x - mean
    mean += delta / n
    return (n, mean, m2 + delta * (x - mean))

  def merge_accumulators(self, accs):
    n, mean, m2 = 0, 0.0, 0.0
    for n_b, mean_b, m2_b in accs:
      if n_b == 0:
        continue
      total = n + n_b
      delta = mean_b - mean
      mean += delta * n_b / total
      m2 += m2_b + delta * delta * n * n_b / total
      n = total
    return (n, mean, m2)

  def extract_output(self, acc):
    n, mean, m2 = acc
    if n == 0:
      return {"count": 0, "mean": 0.0, "std": 1.0}
    return {"count": n, "mean": mean, "std": max(m2 / n, 0.0) ** 0.5}


def column_moments(column: Sequence[float]) -> Tuple[int, float, float]:
  """A batch's (count, mean, sum of squared deviations), with numpy: the partial
  accumulator `_BatchMomentsFn` merges with Chan's formula."""
  x = np.asarray(column, dtype=np.float64)
  if not x.size:
    return (0, 0.0, 0.0)
  mean = float(x.mean())
  return (int(x.size), mean, float(np.square(x - mean).sum()))


class _BatchMomentsFn(_MomentsFn):
  """`_MomentsFn` whose inputs are batches' partial accumulators (`column_moments`)."""

  def add_input(self, acc, partial):
    return self.merge_accumulators([acc, partial])


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
@beam.typehints.with_output_types(Tuple[str, Dict[str, Any]])
def NumericMoments(train_batches, spec):
  """(field, {count, mean, std}) of every numeric model input, on the training split."""
  numeric = [f.name for f in spec.model_inputs if f.kind == spec_lib.NUMERIC]
  return (train_batches
          | "BatchMoments" >> beam.FlatMap(
              lambda b: [(n, column_moments(b[1][n])) for n in numeric])
          | "Moments" >> beam.CombinePerKey(_BatchMomentsFn()))


def distribution_counts(batch: Batch, fields: Sequence[str], labels: Sequence[str]):
  """A batch's ((split, field), {value: [rows, positives of each label]}) for each
  distribution field (and "__all__"); the labels in spec order, one per task."""
  split, columns = batch
  clicks = columns[labels[0]]
  out = [((split, "__all__"), {"__all__": [len(clicks)] + [sum(columns[name])
                                                          for name in labels]})]
  tasks = list(zip(*[columns[name] for name in labels])) if len(labels) > 1 else None
  for name in fields:
    cells: Dict[Any, list] = {}
    if len(labels) == 1:  # the common case, without a loop over the tasks per row
      for value, click in zip(columns[name], clicks):
        cell = cells.get(value)
        if cell is None:
          cells[value] = [1, click]
        else:
          cell[0] += 1
          cell[1] += click
    else:
      for value, row in zip(columns[name], tasks):
        cell = cells.get(value)
        if cell is None:
          cells[value] = [1, *row]
        else:
          cell[0] += 1
          for i, positive in enumerate(row, 1):
            cell[i] += positive
    out.append(((split, name), cells))
  return out


class _MergeCellsFn(beam.CombineFn):
  """{value: [rows, positives...]} dicts summed value by value."""

  def create_accumulator(self):
    return {}

  def add_input(self, acc, cells):
    for value, counts in cells.items():
      cell = acc.get(value)
      if cell is None:
        acc[value] = list(counts)
      else:
        for i, n in enumerate(counts):
          cell[i] += n
    return acc

  def merge_accumulators(self, accs):
    out = {}
    for acc in accs:
      self.add_input(out, acc)
    return out

  def extract_output(self, acc):
    return acc


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
@beam.typehints.with_output_types(Tuple[Tuple[str, str, Any], Tuple[Any, ...]])
def DistributionStatistics(batches, spec):
  """((split, field, value), (rows, positives of each label)) for every distribution
  field value."""
  fields = [f.name for f in spec.distribution_fields]
  labels = [f.name for f in spec.labels]
  return (batches
          | "DistributionCounts" >> beam.FlatMap(distribution_counts, fields, labels)
          | "SumRowsPositives" >> beam.CombinePerKey(_MergeCellsFn())
          | "PerValue" >> beam.FlatMap(
              lambda kv: [((kv[0][0], kv[0][1], v), tuple(counts))
                          for v, counts in kv[1].items()]))


def sequence_lengths(batch: Batch, fields: Sequence[str]):
  """A batch's (field, (rows, total length, longest, empty rows)) per sequence."""
  columns = batch[1]
  out = []
  for name in fields:
    lengths = list(map(len, columns[name]))
    out.append((name, (len(lengths), sum(lengths), max(lengths, default=0),
                       lengths.count(0))))
  return out


class _LengthsFn(beam.CombineFn):
  """(rows, total, longest, empty) tuples summed (the longest: the max)."""

  def create_accumulator(self):
    return (0, 0, 0, 0)

  def add_input(self, acc, x):
    return (acc[0] + x[0], acc[1] + x[1], max(acc[2], x[2]), acc[3] + x[3])

  def merge_accumulators(self, accs):
    out = (0, 0, 0, 0)
    for acc in accs:
      out = self.add_input(out, acc)
    return out

  def extract_output(self, acc):
    return acc


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def SequenceLengths(batches, spec):
  """(field, (rows, total length, longest, empty rows)) of every sequence field over
  the written rows (both splits)."""
  fields = [f.name for f in spec.sequence_fields]
  return (batches
          | "BatchLengths" >> beam.FlatMap(sequence_lengths, fields)
          | "SumLengths" >> beam.CombinePerKey(_LengthsFn()))


def sequence_statistics(spec, lengths: Dict[str, Tuple[int, int, int, int]],
                        counters: Dict[str, int]) -> Dict[str, Dict[str, Any]]:
  """stats.json's `sequences`: per sequence field the written rows, the mean and
  longest length, the share of empty sequences and of truncated ones (a raw list
  longer than max_length, or a key with more earlier rows: the counter
  `truncated_<field>`)."""
  out = {}
  for f in spec.sequence_fields:
    rows, total, longest, empty = lengths.get(f.name, (0, 0, 0, 0))
    truncated = counters.get(f"truncated_{f.name}", 0)
    out[f.name] = {
        "rows": rows, "mean_length": total / rows if rows else 0.0,
        "longest": longest, "max_length": f.max_length,
        "share_empty": empty / rows if rows else 0.0,
        "truncated": truncated, "share_truncated": truncated / rows if rows else 0.0}
  return out
