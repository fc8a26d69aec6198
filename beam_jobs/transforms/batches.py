"""Record batches: rows travel a batch at a time, (split, {field: column}).

Per-row Beam elements cost more than the work done on them; a batch is typed, mapped,
counted and serialized column by column, every column of one length, one split a batch.
"""
from typing import Any, Dict, Iterable, List, Tuple

import apache_beam as beam

NAMESPACE = "hmdn.preprocess"  # the counters' namespace
RECORDS = "records"
DEAD_LETTER = "dead_letter"

Record = Dict[str, Any]

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


def regroup(batch: Batch, splits: List[str]) -> List[Batch]:
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
@beam.typehints.with_input_types(Tuple[str, Record])
@beam.typehints.with_output_types(Batch)
def Batched(split_records, max_rows: int = BATCH_ROWS):
  """(split, record) pairs -> record batches (for the per-row sources' joins)."""
  return (split_records
          | "BatchRows" >> beam.BatchElements(min_batch_size=min(64, max_rows),
                                              max_batch_size=max_rows)
          | "ToColumns" >> beam.FlatMap(rows_to_batches))


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
@beam.typehints.with_output_types(Tuple[str, Record])
def Unbatched(batches):
  """Record batches -> (split, record) pairs."""
  return batches | "ToRows" >> beam.FlatMap(batch_rows)
