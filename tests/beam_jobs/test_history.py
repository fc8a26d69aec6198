"""The history transform: each row gets its key's strictly earlier rows' values."""
import math
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.options.pipeline_options import PipelineOptions

from hmdn.beam_jobs.transforms.batches import rows_to_batches
from hmdn.beam_jobs.transforms.history import AddHistories, History, histories_of_key

HISTORY = History(outputs=("item_history", "cat_history"), key="user_id",
                  of=("item_id", "cat"), order_by="ts", max_length=5)


def _definition(rows, history=HISTORY):
  """The module docstring's definition, computed naively (O(n^2) per key)."""
  def tie(r):
    return [(type(r.get(f)).__name__, repr(r.get(f))) for f in history.of]
  out = []
  for split, record in rows:
    key = record.get(history.key)
    earlier = [] if key in (None, "") else sorted(
        (r for _, r in rows if r.get(history.key) == key and r["ts"] < record["ts"]),
        key=lambda r: (r["ts"], tie(r)))
    expected = dict(record)
    for name, field in zip(history.outputs, history.of):
      expected[name] = [r.get(field) for r in earlier][-history.max_length:]
    out.append((split, expected))
  return out


def _log(n, users, seed, ties=False):
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    ts = float(rng.randrange(0, n // 3)) if ties else rng.random() * 1e6
    rows.append(("train" if rng.random() < 0.8 else "eval", {
        "user_id": f"u{int(rng.paretovariate(1.2)) % users}", "item_id": f"i{i % 37}",
        "cat": rng.randrange(5), "ts": ts}))
  return rows


def _canonical(rows):
  return sorted(repr(sorted(r.items())) + s for s, r in rows)


@pytest.mark.parametrize("ties", [False, True])
def test_histories_of_a_key_are_the_definition(ties):
  rows = _log(400, users=1, seed=3, ties=ties)  # one key: every row in one group
  got = list(histories_of_key(rows, HISTORY))
  assert _canonical(got) == _canonical(_definition(rows))


def test_no_row_sees_itself_a_later_row_or_a_row_of_its_moment():
  rows = [("train", {"user_id": "u", "item_id": f"i{k}", "cat": k, "ts": t})
          for k, t in enumerate([5.0, 1.0, 3.0, 3.0, 9.0])]
  got = {r["item_id"]: r["item_history"] for _, r in histories_of_key(rows, HISTORY)}
  # i2 and i3 share ts=3: neither sees the other; i0 (ts=5) sees both, in item order.
  assert got == {"i1": [], "i2": ["i1"], "i3": ["i1"], "i0": ["i1", "i2", "i3"],
                 "i4": ["i1", "i2", "i3", "i0"]}


def test_the_result_does_not_depend_on_the_arrival_order():
  rows = _log(300, users=1, seed=5, ties=True)
  shuffled = rows[:]
  random.Random(0).shuffle(shuffled)
  assert (_canonical(histories_of_key(rows, HISTORY)) ==
          _canonical(histories_of_key(shuffled, HISTORY)))


def test_max_length_keeps_the_most_recent():
  rows = [("train", {"user_id": "u", "item_id": f"i{t}", "cat": 0, "ts": float(t)})
          for t in range(12)]
  last = [r for _, r in histories_of_key(rows, HISTORY) if r["ts"] == 11.0][0]
  assert last["item_history"] == ["i6", "i7", "i8", "i9", "i10"]


def _run(rows, history=HISTORY):
  batches = rows_to_batches(rows)
  out = {}
  with beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"])) as p:
    records, dead = (p | beam.Create(batches) | AddHistories(history))
    out_rows = records | "Rows" >> beam.FlatMap(
        lambda b: [(b[0], dict(zip(b[1], vs))) for vs in zip(*b[1].values())])
    assert_that(out_rows | "Canon" >> beam.Map(lambda sr: repr(sorted(sr[1].items())) +
                                               sr[0]),
                equal_to(_canonical(_definition([r for r in rows if _finite(r)],
                                                history))), label="rows")
    assert_that(dead | "Reasons" >> beam.Map(lambda d: d["reason"]),
                equal_to([f"ts: {r[1]['ts']!r} is not a finite number (the history "
                          "item_history, cat_history is ordered by it)"
                          for r in rows if not _finite(r)]), label="dead")
  return out


def _finite(row):
  t = row[1].get("ts")
  return isinstance(t, float) and math.isfinite(t)


def test_the_beam_transform_is_the_definition_with_bad_times_dead_lettered():
  rows = _log(600, users=40, seed=7, ties=True)
  rows += [("train", {"user_id": "u1", "item_id": "bad", "cat": 0, "ts": t})
           for t in (float("nan"), float("inf"), None)]
  rows += [("eval", {"user_id": None, "item_id": "anon", "cat": 1, "ts": 3.0})]
  _run(rows)


def test_a_hot_key_among_zipf_users():
  """One user with 100k rows among Zipf-distributed users: every row correct (the
  hot key checked against the definition in O(n log n) by its sorted order)."""
  rng = np.random.default_rng(11)
  times = rng.permutation(100_000)
  hot = [("train", {"user_id": "hot", "item_id": f"i{k % 1000}", "cat": int(k % 7),
                    "ts": float(t)}) for k, t in enumerate(times)]
  item_at = [""] * len(times)
  for k, t in enumerate(times):
    item_at[t] = f"i{k % 1000}"
  zipf = [("train", {"user_id": f"u{int(z)}", "item_id": f"i{k}", "cat": 0,
                     "ts": float(k)}) for k, z in enumerate(rng.zipf(1.5, 5_000))]
  rows = hot + zipf
  batches = rows_to_batches(rows)
  with beam.Pipeline(options=PipelineOptions(["--direct_num_workers=1"])) as p:
    records, dead = p | beam.Create(batches) | AddHistories(HISTORY)
    checked = records | beam.FlatMap(_check_hot_batch, item_at)  # per batch
    assert_that(checked | beam.CombineGlobally(sum), equal_to([100_000]), label="hot")
    assert_that(dead, equal_to([]), label="dead")


def _check_hot_batch(batch, item_at):
  """The hot user's times are 0..99999, each once: the row at t has the items of
  times max(0, t - 5) .. t - 1, oldest first. Yields the batch's count of hot rows."""
  columns = batch[1]
  hot = 0
  for user, t, items in zip(columns["user_id"], columns["ts"], columns["item_history"]):
    if user == "hot":
      t = int(t)
      assert items == item_at[max(0, t - 5):t], (t, items)
      hot += 1
  yield hot


def _hot_key_peak(chunks, max_length):
  """Peak traced memory of the grouped step over one key's chunks, its output
  batches dropped as they come (as the next stage consumes them)."""
  import tracemalloc
  from hmdn.beam_jobs.transforms.history import _HistoriesFn
  fn = _HistoriesFn(History(outputs=("item_history", "cat_history"), key="user_id",
                            of=("item_id", "cat"), order_by="ts", max_length=max_length))
  tracemalloc.start()
  try:
    fn.start_bundle()
    rows = 0
    for out in (fn.process(("hot", chunks)), fn.finish_bundle()):
      for batch in out:  # each dropped before the next is made
        rows += len(getattr(batch, "value", batch)[1]["ts"])
        del batch
    return rows, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_a_hot_keys_memory_is_its_rows_not_its_histories():
  """One key of 100k rows: the step holds the key's rows, never its output: the peak
  with 50-long histories is within a few MB of the peak with 1-long ones (50-long
  histories of 100k rows kept would be ~80 MB more)."""
  from hmdn.beam_jobs.transforms.history import _KeyRowsFn
  rng = np.random.default_rng(3)
  n = 100_000
  batches = rows_to_batches([("train", {"user_id": "hot", "item_id": f"i{k % 5000}",
                                        "cat": f"c{k % 9}", "ts": float(t)})
                             for k, t in enumerate(rng.permutation(n))])
  fn = _KeyRowsFn(HISTORY)
  chunks = []
  for b in batches:
    for i in range(0, n, 1024):
      part = (b[0], {k: v[i:i + 1024] for k, v in b[1].items()})
      chunks.extend(value for key, value in fn.process(part))
  rows_long, peak_long = _hot_key_peak(chunks, 50)
  rows_short, peak_short = _hot_key_peak(chunks, 1)
  assert rows_long == rows_short == n
  assert peak_long - peak_short < 10e6, (peak_long, peak_short)
  assert peak_short < 1_000 * n  # ~ the key's rows: well under 1 kB a row
