"""Composable Beam transforms of the preprocessing job, each one step of the data flow.

Parsing (beam_jobs/sources/) returns tagged outputs, so a bad row is data (the dead
letter), not an exception. Records travel in batches, (split, {field: column}): the
derived features, the combiners (Counters, numpy moments, summed cells) and the
tf.Example serializer (the wire format written directly) work a column at a time, and
the TFRecord sink writes a batch with one call; only the join of a count_bucket, mode
or share table goes row by row. Every transform takes the `FeatureSpec` explicitly;
DoFns hold no global state. Output paths come from `features.preprocessed.PreprocessedData`.
"""
import collections
import hashlib
import itertools
import json
import struct
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from features import spec as spec_lib
from features.preprocessed import EVAL, TRAIN, PreprocessedData, escape_value

NAMESPACE = "hmdn.preprocess"
RECORDS = "records"
DEAD_LETTER = "dead_letter"

Record = Dict[str, Any]


def split_of(key: str, eval_fraction: float) -> str:
  """Deterministic train/eval assignment from a key (stable across runs and runners)."""
  return split_of_bytes(key.encode("utf-8"), eval_fraction)


def split_of_bytes(key: bytes, eval_fraction: float) -> str:
  """`split_of` of a key's UTF-8 bytes (the first 32 bits of its MD5, mod 10,000)."""
  bucket = int.from_bytes(hashlib.md5(key).digest()[:4], "big") % 10_000
  return EVAL if bucket < eval_fraction * 10_000 else TRAIN


# --- Record batches ---------------------------------------------------------------------
# The hot path carries rows a batch at a time: (split, {field: column}), every column
# of one length, one split a batch. Per-row Beam elements cost more than the work done
# on them; a batch is typed, mapped, counted and serialized column by column.
Batch = Tuple[str, Dict[str, list]]
BATCH_ROWS = 1024


def batch_len(batch: Batch) -> int:
  return len(next(iter(batch[1].values()), []))


def rows_to_batches(split_records: Iterable[Tuple[str, Record]]) -> List[Batch]:
  """(split, record) pairs -> one batch per split (records of one split share keys)."""
  by_split: Dict[str, Dict[str, list]] = {}
  for split, record in split_records:
    columns = by_split.get(split)
    if columns is None:
      columns = by_split[split] = {k: [] for k in record}
    for k, v in record.items():
      columns[k].append(v)
  return list(by_split.items())


def merge_batches(batches: Iterable[Batch]) -> List[Batch]:
  """Batches of the same split concatenated (at most one batch per split)."""
  out: Dict[str, Dict[str, list]] = {}
  for split, columns in batches:
    if not batch_len((split, columns)):
      continue
    if split not in out:
      out[split] = {k: list(v) for k, v in columns.items()}
    else:
      for k, v in columns.items():
        out[split][k].extend(v)
  return list(out.items())


def batch_rows(batch: Batch) -> Iterable[Tuple[str, Record]]:
  split, columns = batch
  names = list(columns)
  for values in zip(*columns.values()):
    yield split, dict(zip(names, values))


def _regroup(batch: Batch, splits: List[str]) -> List[Batch]:
  """A batch's rows re-split by `splits` (one per row)."""
  _, columns = batch
  index: Dict[str, List[int]] = {}
  for i, s in enumerate(splits):
    index.setdefault(s, []).append(i)
  if len(index) == 1:
    return [(next(iter(index)), columns)]
  return [(s, {k: [v[i] for i in idx] for k, v in columns.items()})
          for s, idx in index.items()]


@beam.ptransform_fn
def Batched(split_records, max_rows: int = BATCH_ROWS):
  """(split, record) pairs -> record batches (for the per-row sources' joins)."""
  return (split_records
          | "BatchRows" >> beam.BatchElements(min_batch_size=min(64, max_rows),
                                              max_batch_size=max_rows)
          | "ToColumns" >> beam.FlatMap(rows_to_batches))


@beam.ptransform_fn
def Unbatched(batches):
  """Record batches -> (split, record) pairs."""
  return batches | "ToRows" >> beam.FlatMap(batch_rows)


def parse_record(spec: spec_lib.FeatureSpec, cells: Mapping[str, Any],
                 missing_counters: Optional[Mapping[str, Any]] = None) -> Record:
  """Raw cells (strings, or lists for multi-valued fields) -> a typed record of every
  raw field of the spec; raises SpecError naming the field and the value."""
  record = {}
  for f in spec.raw_fields:
    raw = cells.get(f.name)
    if (raw is None or raw == "" or raw == []) and missing_counters is not None:
      missing_counters[f.name].inc()
    record[f.name] = _checked(f, spec.parse_value(f, raw))
  return record


def _checked(feature: spec_lib.Feature, value: Any) -> Any:
  """What the tf.Example and the vocabulary files need beyond `parse_value`: every
  string encodes as UTF-8 (JSON's "\\ud800" does not) and each value of a list is within
  the cell limit."""
  for v in value if isinstance(value, list) else [value]:
    if not isinstance(v, str):
      continue
    if len(v) > spec_lib.MAX_CELL_CHARS:
      raise spec_lib.SpecError(f"field {feature.name!r}: a value of {len(v)} characters "
                               f"is over the limit of {spec_lib.MAX_CELL_CHARS}")
    try:
      v.encode("utf-8")
    except UnicodeEncodeError as e:
      raise spec_lib.SpecError(f"field {feature.name!r}: {v[:60]!r} is not valid "
                               f"Unicode ({e.reason})")
  return value


# --- Time split -----------------------------------------------------------------------
@beam.ptransform_fn
def SplitByTime(batches, field, cutoff=None, quantile=None):
  """Re-splits record batches by a time field: eval = time >= cutoff.

  The cutoff is given, or the `quantile` of the field over all rows, computed by a
  distributed approximate-quantiles combine (one value reaches the workers as a side
  input, never the data). Returns (record batches, a PCollection of the one cutoff).
  """
  if cutoff is not None:
    cut = batches.pipeline | "Cutoff" >> beam.Create([float(cutoff)])
  else:
    steps = 1000
    cut = (batches
           | "TimeValues" >> beam.FlatMap(lambda b: [float(t) for t in b[1][field]])
           | "TimeQuantiles" >> beam.ApproximateQuantiles.Globally(steps + 1)
           | "PickCutoff" >> beam.Map(lambda qs: float(qs[round(quantile * steps)])
                                      if qs else 0.0))
  split = batches | "SplitAtCutoff" >> beam.FlatMap(
      lambda b, c: _regroup(b, [EVAL if float(t) >= c else TRAIN for t in b[1][field]]),
      beam.pvalue.AsSingleton(cut))
  return split, cut


class Progress:
  """Cumulative counts of one DoFn instance, written every few seconds as a small JSON
  file `<progress_prefix>-<kind>-<id>.json` (read by the driver to print progress
  while the DirectRunner, which exposes counters only when the job ends, works). A
  no-op without a prefix."""
  EVERY_S = 2.0

  def __init__(self, progress_prefix: str, kind: str):
    import time
    import uuid
    self._path = (f"{progress_prefix}-{kind}-{uuid.uuid4().hex[:12]}.json"
                  if progress_prefix else "")
    self._counts: Dict[str, int] = {}
    self._clock = time.monotonic
    self._last = self._clock()

  def add(self, **counts: int) -> None:
    if not self._path:
      return
    for k, v in counts.items():
      self._counts[k] = self._counts.get(k, 0) + v
    if self._clock() - self._last >= self.EVERY_S:
      self.flush()

  def flush(self) -> None:
    if not self._path or not self._counts:
      return
    import json
    self._last = self._clock()
    try:
      with FileSystems.create(self._path) as f:
        f.write(json.dumps(self._counts).encode("utf-8"))
    except Exception:  # progress is best effort; the counters are the record.
      pass


# --- Derived (whole-log) features -------------------------------------------------------
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
  row_wise = [f for f in spec.derived_fields if not f.derived.has_table]
  if row_wise:
    batches = batches | "RowDerived" >> beam.Map(_batch_derived, row_wise)
  return batches


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
def NumericMoments(train_batches, spec):
  """(field, {count, mean, std}) of every numeric model input, on the training split."""
  numeric = [f.name for f in spec.model_inputs if f.kind == spec_lib.NUMERIC]
  return (train_batches
          | "BatchMoments" >> beam.FlatMap(
              lambda b: [(n, column_moments(b[1][n])) for n in numeric])
          | "Moments" >> beam.CombinePerKey(_BatchMomentsFn()))


def distribution_counts(batch: Batch, fields: Sequence[str], label: str):
  """A batch's ((split, field), {value: [rows, clicks]}) for each distribution field
  (and "__all__")."""
  split, columns = batch
  clicks = columns[label]
  out = [((split, "__all__"), {"__all__": [len(clicks), sum(clicks)]})]
  for name in fields:
    cells: Dict[Any, list] = {}
    for value, click in zip(columns[name], clicks):
      cell = cells.get(value)
      if cell is None:
        cells[value] = [1, click]
      else:
        cell[0] += 1
        cell[1] += click
    out.append(((split, name), cells))
  return out


class _MergeCellsFn(beam.CombineFn):
  """{value: [rows, clicks]} dicts summed value by value."""

  def create_accumulator(self):
    return {}

  def add_input(self, acc, cells):
    for value, (rows, clicks) in cells.items():
      cell = acc.get(value)
      if cell is None:
        acc[value] = [rows, clicks]
      else:
        cell[0] += rows
        cell[1] += clicks
    return acc

  def merge_accumulators(self, accs):
    out = {}
    for acc in accs:
      self.add_input(out, acc)
    return out

  def extract_output(self, acc):
    return acc


@beam.ptransform_fn
def DistributionStatistics(batches, spec):
  """((split, field, value), (rows, clicks)) for every distribution field value."""
  fields = [f.name for f in spec.distribution_fields]
  label = spec.label.name
  return (batches
          | "DistributionCounts" >> beam.FlatMap(distribution_counts, fields, label)
          | "SumRowsClicks" >> beam.CombinePerKey(_MergeCellsFn())
          | "PerValue" >> beam.FlatMap(
              lambda kv: [((kv[0][0], kv[0][1], v), (rc[0], rc[1]))
                          for v, rc in kv[1].items()]))


# --- tf.Example serialization -----------------------------------------------------------
def _varint(n: int) -> bytes:
  out = bytearray()
  while n > 0x7F:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


_VARINTS = [_varint(n) for n in range(1 << 14)]


def varint(n: int) -> bytes:
  return _VARINTS[n] if n < 16384 else _varint(n)


def _length_delimited(field_tag: bytes, payload: bytes) -> bytes:
  return field_tag + varint(len(payload)) + payload


class ExampleEncoder:
  """Serializes record batches as tf.Example protos by writing the wire format
  directly (what `tf.train.Example(...).SerializeToString()` writes, parsed back
  identically): a field's encoded entry is cached per distinct value, so a batch costs
  a dictionary look-up per categorical cell and one `struct.pack` per number.

  Example{1: Features{1: map entry{1: name, 2: Feature{1: BytesList{1: bytes...} |
  2: FloatList{1: packed float32}}}}}.
  """
  MAX_CACHED = 200_000  # distinct values cached per field (ids can be many)

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._fields = []
    for f in spec.features:
      key = _length_delimited(b"\x0a", f.name.encode("utf-8"))
      if f.kind == spec_lib.NUMERIC:
        entry_len = len(key) + 10
        prefix = (b"\x0a" + varint(entry_len) + key + b"\x12\x08\x12\x06\x0a\x04")
        self._fields.append((f.name, "numeric", prefix))
      else:
        kind = "multi" if f.kind == spec_lib.MULTI_CATEGORICAL else "single"
        self._fields.append((f.name, kind, key))
    self._caches: Dict[str, Dict[Any, bytes]] = {name: {} for name, _, _ in self._fields}
    self._pack = struct.Struct("<f").pack

  @staticmethod
  def _entry(key: bytes, values: Sequence[str]) -> bytes:
    bytes_list = b"".join(_length_delimited(b"\x0a", v.encode("utf-8")) for v in values)
    feature = _length_delimited(b"\x0a", bytes_list)
    return _length_delimited(b"\x0a", key + _length_delimited(b"\x12", feature))

  def _column(self, name: str, kind: str, prefix: bytes, column: list) -> List[bytes]:
    if kind == "numeric":
      pack = self._pack
      return [prefix + pack(x) for x in column]
    cache = self._caches[name]
    if len(cache) > self.MAX_CACHED:
      cache.clear()
    keys = list(map(tuple, column)) if kind == "multi" else column
    out = list(map(cache.get, keys))
    if None in out:  # values not seen yet (by this worker): encoded once each
      for i, encoded in enumerate(out):
        if encoded is None:
          k = keys[i]
          encoded = cache.get(k)
          if encoded is None:
            encoded = cache[k] = self._entry(prefix, k if kind == "multi" else (k,))
          out[i] = encoded
    return out

  def encode(self, columns: Mapping[str, list]) -> List[bytes]:
    """A batch's columns -> one serialized tf.Example per row."""
    parts = [self._column(name, kind, prefix, columns[name])
             for name, kind, prefix in self._fields]
    return [b"\x0a" + varint(len(body)) + body  # Example{1: Features{entries}}
            for body in map(b"".join, zip(*parts))]


class ToExampleFn(beam.DoFn):
  """Record batch -> its serialized tf.Examples (a list), every field of the spec
  typed as it declares; counts the rows."""

  def __init__(self, spec: spec_lib.FeatureSpec, counter_name: str,
               progress_prefix: str = ""):
    self._spec = spec
    self._counter_name = counter_name
    self._progress_prefix = progress_prefix

  def setup(self):
    self._encoder = ExampleEncoder(self._spec)
    self._written = beam.metrics.Metrics.counter(NAMESPACE, self._counter_name)
    self._progress = Progress(self._progress_prefix, "written")

  def process(self, batch: Batch):
    serialized = self._encoder.encode(batch[1])
    self._written.inc(len(serialized))
    self._progress.add(written=len(serialized))
    yield serialized

  def finish_bundle(self):
    self._progress.flush()


def _masked_crc32c(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(data: bytes) -> int:
  global _crc32c
  try:
    import google_crc32c
    _crc32c = google_crc32c.value
  except ImportError:  # pure Python (slow): google-crc32c is a dependency.
    from apache_beam.io.tfrecordio import _default_crc32c_fn
    _crc32c = _default_crc32c_fn
  return _crc32c(data)


def tfrecord_frames(records: Sequence[bytes]) -> bytes:
  """TFRecord framing of many records at once: length, masked CRC32C of the length,
  data, masked CRC32C of the data."""
  pack_q, pack_i = struct.Struct("<Q").pack, struct.Struct("<I").pack
  out = []
  for data in records:
    length = pack_q(len(data))
    out += (length, pack_i(_masked_crc32c(length)), data, pack_i(_masked_crc32c(data)))
  return b"".join(out)


class _BatchTFRecordSink(beam.io.tfrecordio._TFRecordSink):
  """Beam's TFRecord sink (sharding, temporary files, finalization) whose elements
  are lists of serialized records, framed and written with one call each."""

  def write_record(self, file_handle, value):
    file_handle.write(tfrecord_frames(value))


def _batch_sink(prefix, suffix="", template=None, compression=None):
  from apache_beam.io.filesystem import CompressionTypes
  return beam.io.iobase.Write(_BatchTFRecordSink(
      prefix, beam.coders.BytesCoder(), suffix, 0, template,
      compression or CompressionTypes.AUTO))


@beam.ptransform_fn
def WriteExamples(batches, spec, prefix, split, tfds_prefix=None, progress_prefix=""):
  """Record batches -> sharded gzip TFRecords `<prefix>-SSSSS-of-NNNNN<SHARD_SUFFIX>`.

  With `tfds_prefix` (`<dir>/<dataset>-<split>.tfrecord`), the same examples are also
  written uncompressed in TFDS' shard naming (TFDS reads neither gzip nor our names),
  and the result is one (split, shard, examples, bytes) per TFDS shard, counted by the
  workers that read the shards back: TFDS' split info needs per-shard lengths.
  """
  from apache_beam.io.filesystem import CompressionTypes
  serialized = batches | "ToExample" >> beam.ParDo(
      ToExampleFn(spec, f"rows_written_{split}", progress_prefix))
  _ = serialized | "WriteTFRecord" >> _batch_sink(
      prefix, PreprocessedData.SHARD_SUFFIX, None, CompressionTypes.GZIP)
  if tfds_prefix is None:
    return None
  return (serialized
          | "WriteTfdsShards" >> _batch_sink(tfds_prefix, "", "-SSSSS-of-NNNNN",
                                             CompressionTypes.UNCOMPRESSED)
          | "CountTfdsShard" >> beam.ParDo(_CountShardFn(split)))


class _CountShardFn(beam.DoFn):
  """A written TFDS shard -> (split, shard index, examples, bytes)."""

  def __init__(self, split: str):
    self._split = split

  @staticmethod
  def _count_records(path: str) -> int:
    """Records of an uncompressed TFRecord file, from its framing (length, CRC, data,
    CRC): no TensorFlow in the workers."""
    import struct
    n = 0
    from apache_beam.io.filesystem import CompressionTypes
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      while True:
        header = f.read(12)
        if not header:
          return n
        if len(header) < 12:
          raise ValueError(f"{path}: truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        f.seek(length + 4, 1)
        n += 1

  def process(self, path: str):
    import re
    shard = int(re.search(r"-(\d{5})-of-\d{5}$", path).group(1))
    n = self._count_records(path)
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    yield self._split, shard, n, size


@beam.ptransform_fn
def WriteDeadLetter(dead, prefix):
  """Rejected rows as JSON lines {source, row, reason}."""
  return (dead
          | "ToJson" >> beam.Map(json.dumps)
          | "WriteDeadLetter" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))


@beam.ptransform_fn
def WriteSideResults(results: Dict[str, beam.PCollection], prefix: str):
  """Small side results (statistics, TFDS shard sizes, the time cutoff), a
  PCollection each in `results`, as ONE JSON-lines file of [name, value] rows for
  the driver to assemble: one sink for all, because every sink adds four stages
  (each a round of bundles on every worker) to the job."""
  tagged = tuple(
      pcoll | f"ToJson_{name}" >> beam.Map(
          lambda x, name=name: json.dumps([name, x], default=list))
      for name, pcoll in sorted(results.items()))
  return (tagged
          | "Flatten" >> beam.Flatten()
          | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl",
                                           num_shards=1))
