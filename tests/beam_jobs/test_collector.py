"""The cyclic collector is paused around the history step and restored as it was."""
import gc

from hmdn.beam_jobs.transforms.collector import collector_paused


def test_the_collector_resumes_after_a_pause_even_when_the_step_raises():
  assert gc.isenabled()
  try:
    with collector_paused():
      assert not gc.isenabled()
      with collector_paused():  # nested: the inner pause leaves it off
        pass
      assert not gc.isenabled()
      raise ValueError("a bad row")
  except ValueError:
    pass
  assert gc.isenabled()


def test_a_collector_the_user_turned_off_stays_off():
  gc.disable()
  try:
    with collector_paused():
      pass
    assert not gc.isenabled()
  finally:
    gc.enable()


def test_the_history_step_leaves_the_collector_on():
  from hmdn.beam_jobs.transforms.history import History, _HistoriesFn
  import pickle
  fn = _HistoriesFn(History(("hist",), "user", ("item",), "ts", 3))
  fn.setup()
  fn.start_bundle()
  rows = [("u", "a", 1.0), ("u", "b", 2.0), ("u", "c", 3.0)]
  chunk = pickle.dumps(("train", ("user", "item", "ts"), rows))
  out = list(fn.process(("u", [chunk]))) + list(fn.finish_bundle())
  assert gc.isenabled()
  batch = out[0].value if hasattr(out[0], "value") else out[0]
  assert batch[1]["hist"] == [[], ["a"], ["a", "b"]]
