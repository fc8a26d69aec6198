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
so a hot key (one user with 100k rows) costs its own rows, never the log. The rows
travel to the grouping as one element per key and input batch, and leave it in batches
again, so the per-element cost of Beam is paid per batch, not per row.
"""
import dataclasses
import math
import numbers
import operator
import pickle
import random
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from hmdn.beam_jobs.transforms.batches import BATCH_ROWS, DEAD_LETTER, NAMESPACE, Batch, Record
from hmdn.beam_jobs.transforms.collector import collector_paused, freeze_live_objects

SOURCE = "history"  # the dead letter's `source` for rows this step rejects
TRUNCATED_PREFIX = "truncated_"  # as the sources' counter of cut raw sequences
ROWS_REJECTED = "rows_rejected"  # the sources' counter: read = written + rejected
KEYED = "keyed"


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


_first = operator.itemgetter(0)


def _sort_key(value: Any) -> Tuple[str, str]:
  """A total order over values of any type (the tie order within one moment)."""
  return type(value).__name__, repr(value)


def _tie_key(item) -> List[Tuple[str, str]]:
  return [_sort_key(v) for v in item[1][:-1]]  # (the last: a filler, see callers)


def _ordered_histories(items: List[Tuple[Any, ...]], history: History,
                       truncated: Optional[Callable[[int], None]] = None
                       ) -> Iterator[Tuple[Tuple[Any, ...], List[List[Any]]]]:
  """Items (time, `of` values and one filler, payload...) of one key -> (item, one
  history list per `of` field), the definition of the module docstring. Sorted by
  time, and only the rows of one moment by their `of` values (ties are few; the tie
  key is costly). The rows of one moment share their history lists (never mutated);
  `truncated(n)` is told of the n rows of a moment whose history was cut."""
  ordered = sorted(items, key=_first)
  recent: List[List[Any]] = [[] for _ in history.of]  # the key's values so far
  length = history.max_length
  n, i = len(ordered), 0
  while i < n:
    t, j = ordered[i][0], i + 1
    while j < n and ordered[j][0] == t:
      j += 1
    # rows of one key at one time: none sees another
    if truncated is not None and i > history.max_length:  # i earlier rows, some cut
      truncated(j - i)
    snapshot = [values[-length:] for values in recent]  # (a slice: copied at C speed)
    if j - i == 1:
      item = ordered[i]
      yield item, snapshot
      for d, value in zip(recent, item[1]):
        d.append(value)
    else:
      moment = sorted(ordered[i:j], key=_tie_key)
      for item in moment:
        yield item, snapshot
      for item in moment:
        for d, value in zip(recent, item[1]):
          d.append(value)
    i = j


def histories_of_key(rows: Iterable[Tuple[str, Record]], history: History,
                     truncated: Optional[Callable[[int], None]] = None
                     ) -> Iterator[Tuple[str, Record]]:
  """Every (split, record) of one key, each with its histories added as lists;
  `truncated(n)` is told of the n rows of a moment whose history was cut."""
  items = [(order_value(history, record), tuple(record.get(f) for f in history.of) + (0,),
            split, record) for split, record in rows]
  for (_, _, split, record), snapshot in _ordered_histories(items, history, truncated):
    out = dict(record)  # never mutate an element another step may hold
    for name, values in zip(history.outputs, snapshot):
      out[name] = list(values)
    yield split, out


def _is_time(value: Any) -> bool:
  return (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value))


def _all_times(column: Sequence[Any]) -> bool:
  """Every value a finite float or int, checked at C speed: a NaN or an infinity
  makes the sum non-finite (so does an overflow, then each is checked alone)."""
  return set(map(type, column)) <= {float, int} and math.isfinite(sum(column))


class _KeyRowsFn(beam.DoFn):
  """A batch -> (key, pickled (split, field names, the key's rows of the batch as
  tuples)), one element per key of the batch (a row a Beam element would cost more
  than its history); the rows without a key value (nothing is known before them)
  under a key (None, random) no user has, a group of their own; a row whose
  `order_by` is not a finite number to the dead letter with the reason."""

  def __init__(self, history: History):
    self._history = history
    self._rejected = beam.metrics.Metrics.counter(NAMESPACE, ROWS_REJECTED)
    self._keys_missing = beam.metrics.Metrics.counter(NAMESPACE, "history_rows_without_key")

  def process(self, batch: Batch):
    h = self._history
    split, columns = batch
    names = tuple(columns)
    by_key: dict = {}
    unkeyed = []
    times = columns[h.order_by]
    checked = _all_times(times)
    for i, (t, key) in enumerate(zip(times, columns[h.key])):
      if not checked and not _is_time(t):
        self._rejected.inc()
        record = {n: columns[n][i] for n in names}
        try:
          order_value(h, record)
        except ValueError as e:
          yield beam.pvalue.TaggedOutput(DEAD_LETTER, {
              "source": SOURCE, "row": repr(record), "reason": str(e)})
      elif key is None or key == "":
        unkeyed.append(i)
      else:
        rows = by_key.get(key)
        if rows is None:
          rows = by_key[key] = []
        rows.append(i)
    cols = [columns[n] for n in names]
    if by_key:
      for key, idx in by_key.items():  # pickled here: one bytes value is coded at C
        # speed, where Beam's coder walks a tuple of tuples value by value
        if len(idx) == 1:
          rows = [tuple(c[idx[0]] for c in cols)]
        else:
          take = operator.itemgetter(*idx)
          rows = list(zip(*[take(c) for c in cols]))
        yield key, pickle.dumps((split, names, rows), protocol=pickle.HIGHEST_PROTOCOL)
    if unkeyed:  # grouped too (a Flatten with a side output would copy every batch)
      self._keys_missing.inc(len(unkeyed))
      rows = [tuple(c[i] for c in cols) for i in unkeyed]
      yield ((None, random.getrandbits(32)),
             pickle.dumps((split, names, rows), protocol=pickle.HIGHEST_PROTOCOL))


class _HistoriesFn(beam.DoFn):
  """(key, [pickled (split, names, rows)]) -> record batches with the histories, up
  to BATCH_ROWS rows each (a bundle's keys share batches, flushed at its end); counts
  the key's rows and the truncated histories. The rows of one moment share their
  history lists: no later step mutates a value of a batch."""

  def __init__(self, history: History):
    self._history = history
    self._rows_per_key = beam.metrics.Metrics.distribution(NAMESPACE,
                                                           "history_rows_per_key")
    self._truncated = [beam.metrics.Metrics.counter(NAMESPACE, TRUNCATED_PREFIX + name)
                       for name in history.outputs]

  def _count_truncated(self, n: int) -> None:
    for c in self._truncated:
      c.inc(n)

  def setup(self):
    freeze_live_objects()

  def start_bundle(self):
    self._pending = {}  # (split, names) -> rows (field values + histories)

  def _flush(self, split, names):
    rows = self._pending.pop((split, names))
    columns = dict(zip(names + self._history.outputs, map(list, zip(*rows))))
    return split, columns

  def process(self, element):
    with collector_paused():  # a key's rows are many acyclic objects (collector.py)
      yield from self._histories(element)

  def _histories(self, element):
    h = self._history
    key, chunks = element
    if isinstance(key, tuple):  # rows without a key value: nothing is before them
      yield from self._without_key(chunks)
      return
    items = []
    for chunk in chunks:
      split, names, rows = pickle.loads(chunk)
      t = names.index(h.order_by)
      # (a filler last: a tuple even for one `of` field). Tuples of strings and numbers
      # only: the garbage collector stops tracking them, so a hot key's rows do not
      # slow every collection down.
      of = operator.itemgetter(*[names.index(f) for f in h.of], -1)
      items.extend([(row[t], of(row), split, names, row) for row in rows])
    self._rows_per_key.update(len(items))
    pending = self._pending
    for (_, _, split, names, row), snapshot in _ordered_histories(
        items, h, self._count_truncated):
      rows = pending.get((split, names))
      if rows is None:
        rows = pending[(split, names)] = []
      rows.append(row + tuple(snapshot))
      if len(rows) >= BATCH_ROWS:
        yield self._flush(split, names)

  def _without_key(self, chunks):
    empty = tuple([] for _ in self._history.outputs)  # shared, never mutated
    for chunk in chunks:
      split, names, rows = pickle.loads(chunk)
      pending = self._pending.setdefault((split, names), [])
      for row in rows:
        pending.append(row + empty)
        if len(pending) >= BATCH_ROWS:
          yield self._flush(split, names)
          pending = self._pending.setdefault((split, names), [])

  def finish_bundle(self):
    for split, names in list(self._pending):
      yield GlobalWindows.windowed_value(self._flush(split, names))


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
      DEAD_LETTER, main=KEYED)
  records = (keyed[KEYED]
             | "GroupByKey" >> beam.GroupByKey()
             | "Histories" >> beam.ParDo(_HistoriesFn(history)))
  return records, keyed[DEAD_LETTER]
