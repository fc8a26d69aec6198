"""Output directories: one writer a directory (features/locks.py), and a directory is
ours or untouched (features/ownership.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from hmdn.features import locks, ownership
from hmdn.features.preprocessed import PreprocessedData
from hmdn.features.run_directory import RunDirectory


def _dead_pid() -> int:
  """The pid of a process that has ended."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(directory, **record):
  os.makedirs(directory, exist_ok=True)
  with open(locks.lock_path(str(directory)), "w") as f:
    json.dump(dict({"host": socket.gethostname(), "started": "then"}, **record), f)


def test_lock_is_held_and_released(tmp_path):
  out = str(tmp_path / "out")
  with locks.held(out, "--model_dir"):
    record = locks.holder(out)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with locks.held(out, "--model_dir"):  # nested in the same process
      pass
    assert locks.holder(out) is not None
  assert not os.path.exists(locks.lock_path(out))


def test_second_writer_is_refused_naming_the_holder(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _write_lock(tmp_path, pid=sleeper.pid, started="2026-01-01 00:00:00 UTC")
    with pytest.raises(locks.LockedError) as e:
      with locks.held(str(tmp_path), "--model_dir"):
        pass
  finally:
    sleeper.kill()
    sleeper.wait()
  assert f"pid {sleeper.pid} on {socket.gethostname()}" in str(e.value)
  assert "2026-01-01 00:00:00 UTC" in str(e.value) and "--model_dir=" in str(e.value)
  assert locks.holder(str(tmp_path))["pid"] == sleeper.pid  # not taken


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
  pid = _dead_pid()
  _write_lock(tmp_path, pid=pid)
  with locks.held(str(tmp_path), "--data_dir"):
    assert locks.holder(str(tmp_path))["pid"] == os.getpid()
  assert "took over the stale lock" in capsys.readouterr().err
  assert not os.path.exists(locks.lock_path(str(tmp_path)))


def test_lock_of_another_host_is_not_taken(tmp_path):
  _write_lock(tmp_path, pid=1, host="elsewhere.example")
  with pytest.raises(locks.LockedError, match="another host"):
    with locks.held(str(tmp_path), "--export_dir"):
      pass


def test_claim_marks_absent_and_empty_directories(tmp_path):
  absent, empty = str(tmp_path / "a"), str(tmp_path / "e")
  os.makedirs(empty)
  assert ownership.claim(absent, ownership.RUN, "--model_dir") is False
  assert ownership.claim(empty, ownership.RUN, "--model_dir") is False
  assert ownership.marked_kind(absent) == ownership.marked_kind(empty) == ownership.RUN
  (tmp_path / "e" / "run_config.json").write_text("{}")
  assert ownership.claim(empty, ownership.RUN, "--model_dir") is True  # ours, not empty


def test_foreign_directory_is_refused_and_untouched(tmp_path):
  """Issue 22.1: a folder of the user's holding names the job writes (train/, stats.json,
  spec.yaml) is not a data directory: nothing in it is deleted or overwritten."""
  user = tmp_path / "mine"
  (user / "train").mkdir(parents=True)
  (user / "train" / "notes.txt").write_text("mine")
  (user / "stats.json").write_text("mine")
  (user / "spec.yaml").write_text("mine")
  before = sorted(str(p) for p in user.rglob("*"))
  with pytest.raises(ownership.ForeignDirectoryError) as e:
    ownership.claim(str(user), ownership.DATA, "--data_dir",
                    signature=(PreprocessedData.METADATA_FILE,),
                    own=PreprocessedData.is_output_name)
  assert f"--data_dir={user} is not empty and was not written by hmdn" in str(e.value)
  assert "'spec.yaml'" in str(e.value)
  assert sorted(str(p) for p in user.rglob("*")) == before
  assert (user / "train" / "notes.txt").read_text() == "mine"


def test_other_kind_and_file_are_refused(tmp_path):
  data = str(tmp_path / "data")
  ownership.claim(data, ownership.DATA, "--data_dir")
  with pytest.raises(ownership.ForeignDirectoryError, match="is a data directory"):
    RunDirectory(data).claim()
  (tmp_path / "file").write_text("x")
  with pytest.raises(ownership.ForeignDirectoryError, match="is a file, not a directory"):
    ownership.claim(str(tmp_path / "file"), ownership.EXPORT, "--export_dir")


def test_unmarked_older_outputs_are_recognised(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  (run / "run_config.json").write_text("{}")
  assert RunDirectory(str(run)).claim() is True
  assert ownership.marked_kind(str(run)) == ownership.RUN
  (run / "mine.txt").write_text("x")
  os.remove(ownership.marker_path(str(run)))
  with pytest.raises(ownership.ForeignDirectoryError, match="'mine.txt'"):
    RunDirectory(str(run)).claim()
