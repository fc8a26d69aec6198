"""Behaviour histories: each row gets the values of its key's strictly earlier rows.

For a row of user u at time t, the history of `of` is the `of` values of u's rows whose
`order_by` is below t, oldest first and most recent last, truncated to the last
`max_length`. Never the row itself, never a later row, and never a row of the same
moment: rows of one key with equal `order_by` are not in each other's history (two
events logged at the same second cannot be ordered, so neither saw the other); they
enter the later rows' histories in the order of their `of` values, so the result does
not depend on the order the rows arrive in.

With a time split on the `order_by` field a training row's history holds no eval-period
row (every eval row is later); an eval row's history holds the key's earlier rows of
both periods, as a served request sees everything logged before it. (The job refuses a
time split on another field than a history's `order_by`, for which this would not
hold; with a split by hash the histories hold rows of both splits.)

A row whose key has more than `max_length` earlier rows keeps the most recent ones and
counts in `truncated_<output>`. The history values are not counted into any
vocabulary: they index the `of` field's vocabulary, made from the target values of
the training rows, and a value never seen as a target is OOV.

Memory is one key's rows: the rows are grouped by key and each group is sorted alone,
so a hot key (one user with 100k rows) costs its own rows, never the log.
"""
import collections
import dataclasses
import math
import numbers
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam

from hmdn.beam_jobs.transforms.batches import (DEAD_LETTER, NAMESPACE, Batch, Batched,
                                               Record, batch_rows)

SOURCE = "history"  # the dead letter's `source` for rows this step rejects
TRUNCATED_PREFIX = "truncated_"  # as the sources' counter of cut raw sequences
ROWS_REJECTED = "rows_rejected"  # the sources' counter: read = written + rejected
KEYED, UNKEYED = "keyed", "unkeyed"


@dataclasses.dataclass(frozen=True)
class History:
  """One history derivation: `outputs[i]` is the history of `of[i]` (in step)."""
  outputs: Tuple[str, ...]
  key: str
  of: Tuple[str, ...]
  order_by: str
  max_length: int

  def __post_init__(self):
    if len(self.outputs) != len(self.of) or not self.of:
      raise ValueError(f"history: {len(self.outputs)} outputs for {len(self.of)} "
                       "`of` fields; expected one output per `of` field")
    if isinstance(self.max_length, bool) or not isinstance(
        self.max_length, numbers.Integral) or self.max_length < 1:
      raise ValueError(f"history: max_length must be an integer >= 1, got "
                       f"{self.max_length!r}")


def order_value(history: History, record: Record) -> float:
  """The row's `order_by` as a finite float, or ValueError naming field and value."""
  value = record.get(history.order_by)
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
      value):
    raise ValueError(f"{history.order_by}: {value!r} is not a finite number (the "
                     f"history {', '.join(history.outputs)} is ordered by it)")
  return float(value)


def _sort_key(value: Any) -> Tuple[str, str]:
  """A total order over values of any type (the tie order within one moment)."""
  return type(value).__name__, repr(value)


def histories_of_key(rows: Iterable[Tuple[str, Record]], history: History,
                     truncated: Optional[Callable[[int], None]] = None
                     ) -> Iterator[Tuple[str, Record]]:
  """Every (split, record) of one key, each with its histories added as lists;
  `truncated(n)` is told of the n rows of a moment whose history was cut."""
  ordered = sorted(
      ((order_value(history, record), [_sort_key(record.get(f)) for f in history.of],
        split, record) for split, record in rows), key=lambda row: row[:2])
  recent = [collections.deque(maxlen=history.max_length) for _ in history.of]
  i = 0
  while i < len(ordered):
    j = i
    while j < len(ordered) and ordered[j][0] == ordered[i][0]:
      j += 1
    moment = ordered[i:j]  # rows of one key at one time: none sees another
    if truncated is not None and i > history.max_length:  # i earlier rows, some cut
      truncated(j - i)
    snapshot = [list(d) for d in recent]
    for _, _, split, record in moment:
      out = dict(record)  # never mutate an element another step may hold
      for name, values in zip(history.outputs, snapshot):
        out[name] = list(values)
      yield split, out
    for _, _, _, record in moment:
      for d, field in zip(recent, history.of):
        d.append(record.get(field))
    i = j


class _KeyRowsFn(beam.DoFn):
  """A batch -> (key, (split, record)) for rows with a key; rows without one (no key
  value: nothing is known before them) to UNKEYED; a row whose `order_by` is not a
  finite number to the dead letter with the reason."""

  def __init__(self, history: History):
    self._history = history
    self._rejected = beam.metrics.Metrics.counter(NAMESPACE, ROWS_REJECTED)
    self._keys_missing = beam.metrics.Metrics.counter(NAMESPACE, "history_rows_without_key")

  def process(self, batch: Batch):
    h = self._history
    for split, record in batch_rows(batch):
      try:
        order_value(h, record)
      except ValueError as e:
        self._rejected.inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, {
            "source": SOURCE, "row": repr(record), "reason": str(e)})
        continue
      key = record.get(h.key)
      if key is None or key == "":
        self._keys_missing.inc()
        out = dict(record)
        for name in h.outputs:
          out[name] = []
        yield beam.pvalue.TaggedOutput(UNKEYED, (split, out))
      else:
        yield key, (split, record)


class _HistoriesFn(beam.DoFn):
  """(key, rows) -> each row with its histories; counts the key's rows."""

  def __init__(self, history: History):
    self._history = history
    self._rows_per_key = beam.metrics.Metrics.distribution(NAMESPACE,
                                                           "history_rows_per_key")
    self._truncated = [beam.metrics.Metrics.counter(NAMESPACE, TRUNCATED_PREFIX + name)
                       for name in history.outputs]

  def _count_truncated(self, n: int) -> None:
    for c in self._truncated:
      c.inc(n)

  def process(self, element):
    _, rows = element
    rows = list(rows)
    self._rows_per_key.update(len(rows))
    yield from histories_of_key(rows, self._history, self._count_truncated)


def history_of_group(group) -> History:
  """The transform's `History` of a spec's `HistoryGroup` (histories in step)."""
  return History(outputs=tuple(group.outputs), key=group.key, of=tuple(group.of),
                 order_by=group.order_by, max_length=group.max_length)


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def AddSpecHistories(batches, spec):
  """Every history group of the spec, one keyed pass each -> (record batches, the
  dead letters of every pass, flattened)."""
  dead = []
  for i, group in enumerate(spec.history_groups):
    batches, rejected = batches | f"History{i}_{group.key}" >> AddHistories(
        history_of_group(group))
    dead.append(rejected)
  return batches, dead


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def AddHistories(batches, history: History):
  """Record batches -> (record batches with the history fields, dead letter).

  Keyed by `history.key`, grouped, each key's rows sorted alone (memory: one key's
  rows), re-batched. The dead letter holds {source, row, reason} dicts, counted in the
  sources' `rows_rejected` so that read = written + rejected still holds.
  """
  keyed = batches | "KeyRows" >> beam.ParDo(_KeyRowsFn(history)).with_outputs(
      DEAD_LETTER, UNKEYED, main=KEYED)
  with_history = (keyed[KEYED]
                  | "GroupByKey" >> beam.GroupByKey()
                  | "Histories" >> beam.ParDo(_HistoriesFn(history)))
  records = ((with_history, keyed[UNKEYED])
             | "Flatten" >> beam.Flatten()
             | "Rebatch" >> Batched())
  return records, keyed[DEAD_LETTER]
