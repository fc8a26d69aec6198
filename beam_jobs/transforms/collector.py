"""Keeping Python's cyclic garbage collector off the objects a Beam worker's steps
allocate by the million.

Every collection walks the objects of its generation, and the oldest holds all a
worker has imported (TensorFlow and Beam: ~360k objects) and, in the history step, a
key's rows (a hot user: 100k+ tuples) while their history lists are built. On the
1M-row history benchmark those walks took a quarter of the job (docs/speed.md). Two
remedies:
- `freeze_live_objects`, in the `setup` of the steps that handle rows: the objects alive
  then (modules, the pipeline, the runner's state) move to the collector's permanent
  generation, which it never walks (the price: one of them that later ends in a garbage
  cycle is not freed; that state lives as long as the worker anyway);
- `collector_paused` around the history step: its tuples, lists, strings and bytes
  reference no container back, so reference counting frees them all; only the cycle
  search pauses, and resumes (finding any cycle made meanwhile) when the step ends.
"""
import contextlib
import gc
from typing import Iterator


def freeze_live_objects() -> None:
  """Moves every object alive now to the permanent generation (a step's `setup`:
  after the imports and the earlier steps' set-up, before this step's rows)."""
  gc.freeze()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
  """Disables the cyclic collector for the block, re-enabling it only if it was on
  (nested pauses and a collector the user turned off stay as they were)."""
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if was_enabled:
      gc.enable()
