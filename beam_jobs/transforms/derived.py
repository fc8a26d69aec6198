"""Derived (whole-log) features: count_bucket, mode and share tables from the training
split joined back onto every row; crosses and numeric buckets per batch."""
import collections
from typing import Any, Dict, List, Sequence

import apache_beam as beam

from hmdn.beam_jobs.transforms.batches import Batch, Batched, Unbatched
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import TRAIN, PreprocessedData, escape_value


class _AttachTableValuesFn(beam.DoFn):
  """(source value, {_rows, <field>: table entries}) -> each row with each field's
  entry for the value (a count_bucket's bucket, a mode's value, a share's bucket), or
  the field's default for a value never seen in the training split (the bucket of a
  count of 0; "" for a mode or a share)."""

  def __init__(self, features: Sequence[spec_lib.Feature]):
    self._defaults = {f.name: f.derived.table_default for f in features}

  def process(self, element):
    _, grouped = element
    values = {}
    for name, default in self._defaults.items():
      entries = list(grouped[name])
      values[name] = entries[0] if entries else default
    for split, record in grouped["_rows"]:
      out = dict(record)  # never mutate an element another step may hold
      out.update(values)
      yield split, out


def _batch_derived(batch: Batch, features) -> Batch:
  """Crosses and numeric buckets of a batch, column by column (a cross may read a
  field derived before it)."""
  split, columns = batch
  out = dict(columns)
  for f in features:
    d = f.derived
    if d.kind == spec_lib.CROSS:
      out[f.name] = [d.separator.join(map(str, vs))
                     for vs in zip(*[out[s] for s in d.sources])]
    elif d.kind == spec_lib.BUCKET:
      out[f.name] = list(map(d.bucketizer(), out[d.source]))
  return split, out


def _train_counts(batch: Batch, source: str):
  if batch[0] != TRAIN:
    return []
  return list(collections.Counter(batch[1][source]).items())


def _row_wise_chain(spec, name: str) -> List[spec_lib.Feature]:
  """The row-wise derived fields (spec order) needed to compute field `name` from
  the raw fields: a mode's or a share's `of` (the spec checks it reads raw fields
  only)."""
  needed, pending = set(), [name]
  while pending:
    f = spec[pending.pop()]
    if f.is_derived and f.name not in needed:
      needed.add(f.name)
      pending.extend(f.derived.reads)
  return [f for f in spec.derived_fields if f.name in needed]


def _train_pair_counts(batch: Batch, source: str, of: str, chain):
  """A training batch's ((source value, `of` value), rows): `of` computed per batch
  with `_batch_derived` when it is itself derived."""
  if batch[0] != TRAIN:
    return []
  columns = _batch_derived(batch, chain)[1] if chain else batch[1]
  return list(collections.Counter(zip(columns[source], columns[of])).items())


class _ModeFn(beam.CombineFn):
  """(count, value) pairs of one key -> the value of the largest count, ties broken by
  the smallest value: associative and commutative, so any worker split agrees."""

  def create_accumulator(self):
    return None

  @staticmethod
  def _better(a, b):
    if a is None:
      return b
    if b is None:
      return a
    return a if (a[0] > b[0] or (a[0] == b[0] and a[1] <= b[1])) else b

  def add_input(self, acc, count_value):
    return self._better(acc, tuple(count_value))

  def merge_accumulators(self, accs):
    out = None
    for acc in accs:
      out = self._better(out, acc)
    return out

  def extract_output(self, acc):
    return acc[1]


class _SumCountsFn(beam.CombineFn):
  """Equal-length tuples of counts summed element by element (associative and
  commutative)."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, counts):
    return list(counts) if acc is None else [a + b for a, b in zip(acc, counts)]

  def merge_accumulators(self, accs):
    out = None
    for acc in accs:
      if acc is not None:
        out = self.add_input(out, acc)
    return out

  def extract_output(self, acc):
    return tuple(acc or ())


def _share_counts(pair_count, values: Sequence[str]):
  """((source value, `of` value), rows) -> (source value, (rows if `of` == each
  share's value else 0, ..., rows))."""
  (key, of_value), count = pair_count
  return key, tuple(count if of_value == v else 0 for v in values) + (count,)


def _count_bucket_table(batches, f: spec_lib.Feature):
  """(source value, bucket of its training count) of a count_bucket field."""
  d = f.derived
  return (batches
          | f"{f.name}TrainValues" >> beam.FlatMap(_train_counts, d.source)
          | f"{f.name}Count" >> beam.CombinePerKey(sum)
          | f"{f.name}Bucket" >> beam.MapTuple(
              lambda k, c, bucket=d.bucketizer(): (k, bucket(c))))


def _profile_tables(batches, spec, source: str, of: str,
                    fields: Sequence[spec_lib.Feature]) -> Dict[str, Any]:
  """{field: (source value, table value)} of the mode and share fields that read
  (source, of), from the TRAINING split: the pair counts once for all of them, then
  one combine per mode and one for all the shares (their counts side by side)."""
  label = f"{source}_{of}"
  pairs = (batches
           | f"TrainPairs_{label}" >> beam.FlatMap(
               _train_pair_counts, source, of, _row_wise_chain(spec, of))
           | f"CountPairs_{label}" >> beam.CombinePerKey(sum))
  tables = {}
  for f in fields:
    if f.derived.kind == spec_lib.MODE:
      tables[f.name] = (pairs
                        | f"{f.name}ByKey" >> beam.MapTuple(
                            lambda kv, c: (kv[0], (c, kv[1])))
                        | f"{f.name}Mode" >> beam.CombinePerKey(_ModeFn()))
  shares = [f for f in fields if f.derived.kind == spec_lib.SHARE]
  if shares:
    counts = (pairs
              | f"ShareCounts_{label}" >> beam.Map(
                  _share_counts, [f.derived.value for f in shares])
              | f"SumShares_{label}" >> beam.CombinePerKey(_SumCountsFn()))
    for i, f in enumerate(shares):  # counts[-1]: all the key's rows, never 0
      tables[f.name] = counts | f"{f.name}Bucket" >> beam.MapTuple(
          lambda k, c, i=i, bucket=f.derived.bucketizer(): (k, bucket(c[i] / c[-1])))
  return tables


def _tables(batches, spec, fields: Sequence[spec_lib.Feature]) -> Dict[str, Any]:
  """{field: (source value, table value)} of every table field, from the TRAINING
  split; modes and shares reading the same (source, of) share one pair count."""
  tables, profiles = {}, {}
  for f in fields:
    if f.derived.kind == spec_lib.COUNT_BUCKET:
      tables[f.name] = _count_bucket_table(batches, f)
    else:
      profiles.setdefault((f.derived.source, f.derived.of), []).append(f)
  for (source, of), group in profiles.items():
    tables.update(_profile_tables(batches, spec, source, of, group))
  return tables


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
@beam.typehints.with_output_types(Batch)
def AddDerivedFeatures(batches, spec, data: PreprocessedData):
  """Adds the spec's derived fields to record batches.

  count_bucket: counts each source value in the TRAINING split (a batch's Counter,
  summed per value); mode and share: count each (source value, `of` value) pair there
  the same way, once per (source, of) for all the fields reading it; a mode keeps each
  source value's most frequent `of` value (ties: the smallest), a share sums (rows
  with `of` == value, all rows) per source value and buckets the fraction. Each
  writes `data.table_path(field)` (escaped value TAB escaped bucket or mode: the
  asset the model looks it up in, `features.preprocessed.escape_value`); the entries
  are joined back onto every row, train and eval, with one CoGroupByKey per source
  field (row by row: a table may be too large for a side input); crosses and numeric
  buckets are computed per batch afterwards (a cross may read a table field). The
  values are the ones the model recomputes from the raw ids.
  """
  table_fields = [f for f in spec.derived_fields if f.derived.has_table]
  if table_fields:
    split_records = batches | "TableJoinRows" >> Unbatched()
    by_source: Dict[str, Dict[str, Any]] = {}
    tables = _tables(batches, spec, table_fields)
    for f in table_fields:
      table = tables[f.name]
      by_source.setdefault(f.derived.source, {})[f.name] = table
      _ = (table
           | f"{f.name}TableLines" >> beam.MapTuple(
               lambda k, v: f"{escape_value(k)}\t{escape_value(v)}")
           | f"{f.name}WriteTable" >> beam.io.WriteToText(
               data.table_path(f.name), shard_name_template=""))
    for source, tables in by_source.items():  # one join per source, all its tables
      rows = split_records | f"KeyRowsBy_{source}" >> beam.Map(
          lambda sr, s=source: (sr[1][s], sr))
      fields = [spec[name] for name in tables]
      split_records = (dict(tables, _rows=rows)  # (no field name starts with "_")
                       | f"JoinBy_{source}" >> beam.CoGroupByKey()
                       | f"AttachBy_{source}" >> beam.ParDo(_AttachTableValuesFn(fields)))
    batches = split_records | "Rebatch" >> Batched()
  row_wise = [f for f in spec.derived_fields if f.derived.is_row_wise]
  if row_wise:
    batches = batches | "RowDerived" >> beam.Map(_batch_derived, row_wise)
  return batches
