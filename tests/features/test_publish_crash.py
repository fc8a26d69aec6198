"""The data directory's completion marker survives a kill at any publishing step.

`hmdn preprocess` removes metadata.json first, clears the old outputs, writes into a
staging directory, moves the outputs into place and writes metadata.json last. Only
exception paths are tested elsewhere; here the process "dies" before each file-system
step of a run in turn: from that step on nothing touches the disk (no cleanup runs, as
after a SIGKILL). Every such directory must be refused by the readers, or hold the new
run complete, and the next run must leave exactly a clean run's files. The Beam
pipeline itself is replaced by a stand-in that writes a staging directory (the steps
under test are the job's, around the pipeline), so the whole file runs in seconds."""
import json
import os
import shutil

import pytest
import tensorflow as tf

from hmdn.beam_jobs import preprocess
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.features import locks
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import EVAL, TRAIN, IncompleteDataError, PreprocessedData

SPEC = """name: crash
features:
  - {name: click, kind: numeric, role: label}
  - {name: scenario, kind: categorical, distribution_level: 0}
"""
# Every file a run publishes (relative to the data directory), and its content.
OUTPUTS = ("train/part-00000-of-00001.tfrecord.gz", "eval/part-00000-of-00001.tfrecord.gz",
           "vocab/scenario.txt", "dead_letter/rows-00000-of-00001.jsonl", "stats.json")


class Killed(BaseException):
  """The process died (not an Exception: no handler of the job may catch it)."""


class Disk:
  """Wraps the file-system mutations the job makes; `kill_at` = the index of the step
  before which the process dies. Once dead, every later mutation is a no-op."""

  def __init__(self, kill_at=None):
    self.kill_at = kill_at
    self.steps = []
    self.dead = False

  def wrap(self, name, fn):
    def step(*args, **kwargs):
      if self.dead:
        return None
      if self.kill_at is not None and len(self.steps) == self.kill_at:
        self.dead = True
        raise Killed(f"killed before {name}{args}")
      self.steps.append((name, args))
      return fn(*args, **kwargs)
    return step

  def install(self, monkeypatch):
    for label, owner in (("os", os), ("shutil", shutil), ("tf.io.gfile", tf.io.gfile)):
      for name in ("replace", "remove", "unlink", "rename", "rmtree"):
        if hasattr(owner, name):
          monkeypatch.setattr(owner, name, self.wrap(f"{label}.{name}",
                                                     getattr(owner, name)))


def _stand_in(version):
  """Replaces the pipeline: writes a complete staging directory tagged `version`."""
  def run_staged(config, beam_args, spec, source, inputs, data):
    spec.save(data.spec_path)
    for rel in OUTPUTS:
      path = data.path(rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.write(version)
    return {"version": version, "rows_read": 4, "rows_written": {TRAIN: 3, EVAL: 1}}
  return run_staged


@pytest.fixture()
def job(tmp_path):
  (tmp_path / "spec.yaml").write_text(SPEC)
  (tmp_path / "raw.csv").write_text("click,scenario\n1,s0\n0,s1\n1,s0\n0,s0\n")
  out = tmp_path / "data"

  def run(monkeypatch, version, disk=None):
    with monkeypatch.context() as m:
      m.setattr(preprocess, "_run_staged", _stand_in(version))
      if disk is not None:
        disk.install(m)
      preprocess.run(PreprocessConfig(raw=str(tmp_path / "raw.csv"), output_dir=str(out),
                                      spec_path=str(tmp_path / "spec.yaml"),
                                      direct_num_workers=1, overwrite=True))
  return run, str(out)


def _files(out):
  return sorted(os.path.relpath(os.path.join(root, f), out)
                for root, _, files in os.walk(out) for f in files)


def _assert_refused(out):
  data = PreprocessedData(out)
  assert not data.is_complete()
  for reader in ("metadata", "stats", "spec"):
    with pytest.raises(IncompleteDataError, match=f"{out}: not a complete"):
      getattr(PreprocessedData(out), reader)


def _assert_complete(out, version):
  data = PreprocessedData(out)
  assert data.metadata["version"] == version
  for rel in OUTPUTS:
    path = os.path.join(out, rel)
    assert os.path.exists(path), f"{out} is marked complete without {rel}"
    with open(path) as f:
      assert f.read() == version, rel
  assert data.spec.name == "crash"


def _dead_pid() -> int:
  for pid in range(4_194_303, 4_000_000, -1):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return pid
    except PermissionError:
      continue
  raise RuntimeError("no free pid")


def _as_if_the_process_died(out):
  """A kill here is simulated in this process: what a SIGKILL leaves of its lock (the
  record and a temporary file) now names a process that no longer runs."""
  lock = os.path.join(out, locks.LOCK_FILE)
  dead = _dead_pid()
  for name in os.listdir(out):
    if name.startswith(locks.LOCK_FILE + f".{os.getpid()}."):
      os.rename(os.path.join(out, name), lock + f".{dead}.tmp")
  if os.path.exists(lock):
    with open(lock) as f:
      record = json.load(f)
    record["pid"] = dead
    with open(lock, "w") as f:
      json.dump(record, f)


def test_a_kill_at_any_publishing_step_leaves_a_refused_or_complete_directory(
    job, monkeypatch):
  run, out = job
  run(monkeypatch, "first")
  clean = _files(out)  # what one run leaves
  # (.hmdn-output.json: the marker saying the directory is hmdn's, features/ownership)
  assert set(OUTPUTS) | {"metadata.json", "spec.yaml", ".hmdn-output.json"} == set(clean)
  counted = Disk()
  run(monkeypatch, "counted", counted)
  _assert_complete(out, "counted")
  steps = [name for name, _ in counted.steps]
  assert len(steps) >= 8 and "os.replace" in steps, steps  # the publishing moves
  outcomes = []
  for kill_at in range(len(steps)):
    run(monkeypatch, "old")
    _assert_complete(out, "old")
    with pytest.raises(Killed):
      run(monkeypatch, "new", Disk(kill_at))
    _as_if_the_process_died(out)
    if PreprocessedData(out).is_complete():  # all of one run, or refused
      version = PreprocessedData(out).metadata["version"]
      _assert_complete(out, version)
      outcomes.append(version)
    else:
      _assert_refused(out)
      outcomes.append("refused")
    run(monkeypatch, "next")  # the next run recovers
    _assert_complete(out, "next")
    assert _files(out) == clean, (kill_at, counted.steps[kill_at])
  # Killed before its first step the old run stays whole; from the marker's removal
  # on the directory is refused until the new marker is written, the last step of
  # publishing (what follows it is the staging directory's removal).
  first_refused, first_new = outcomes.index("refused"), outcomes.index("new")
  assert outcomes == (["old"] * first_refused + ["refused"] * (first_new - first_refused)
                      + ["new"] * (len(outcomes) - first_new)), outcomes
  # The step that makes the directory refused is the marker's removal; before it only
  # hmdn's lock and ownership marker were touched.
  assert counted.steps[first_refused - 1][0] == "os.remove" and counted.steps[
      first_refused - 1][1][0].endswith("/metadata.json"), counted.steps
  assert all(".hmdn" in str(args) for _, args in counted.steps[:first_refused - 1]), (
      counted.steps[:first_refused])
  assert counted.steps[first_new - 1][0] == "tf.io.gfile.rename", counted.steps
  assert counted.steps[first_new - 1][1][1].endswith("/metadata.json"), counted.steps
  assert spec_lib.load_spec(os.path.join(out, "spec.yaml")).name == "crash"
