"""The run-directory contract: records, contradictions, fingerprints, relative paths."""
import os

import pytest

from hmdn.features import preprocessed
from hmdn.features.run_directory import RunDirectory, RunMismatchError, absolute


def _record(run, **model):
  run.write_record({"model": dict({"name": "hmdn_moe", "num_levels": 4,
                                   "view_units": [64]}, **model),
                    "fingerprints": {"spec": "s1", "vocabularies": "v1", "tables": "t1"},
                    "data_dir": "/data/a"})


def test_relative_paths_are_made_absolute_from_the_working_directory(tmp_path,
                                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert absolute("runs/x") == os.path.join(str(tmp_path), "runs", "x")
  assert RunDirectory("runs/x").model_dir == os.path.join(str(tmp_path), "runs", "x")
  assert absolute("gs://bucket/x") == "gs://bucket/x"


def test_a_directory_without_a_record_is_not_a_run(tmp_path):
  run = RunDirectory(str(tmp_path))
  assert not run.has_run()
  with pytest.raises(FileNotFoundError, match="not a run directory"):
    run.record()


def test_recorded_model_config_is_returned_and_equal_flags_pass(tmp_path):
  run = RunDirectory(str(tmp_path))
  _record(run)
  assert run.check_model({})["name"] == "hmdn_moe"
  # Tuples and lists of the same values are the same option.
  assert run.check_model({"name": "hmdn_moe", "view_units": (64,)})["num_levels"] == 4


@pytest.mark.parametrize("given,message", [
    ({"name": "dnn"}, r"--model=dnn contradicts the run in .*--model=hmdn_moe"),
    ({"num_levels": 6}, r"--num_levels=6 contradicts .* --num_levels=4"),
])
def test_a_contradicting_flag_names_both_values(tmp_path, given, message):
  run = RunDirectory(str(tmp_path))
  _record(run)
  with pytest.raises(RunMismatchError, match=message):
    run.check_model(given)


def test_other_vocabularies_are_refused(tmp_path):
  run = RunDirectory(str(tmp_path))
  _record(run)
  run.check_data("/data/a", {"spec": "s1", "vocabularies": "v1", "tables": "t1"})
  with pytest.raises(RunMismatchError, match=r"other vocabularies.*v2.*v1"):
    run.check_data("/data/b", {"spec": "s1", "vocabularies": "v2", "tables": "t1"})
  with pytest.raises(RunMismatchError, match=r"other spec"):
    run.check_data("/data/b", {"spec": "s2", "vocabularies": "v1", "tables": "t1"})


def test_history_survives_rewrites_and_clear_removes_only_run_outputs(tmp_path):
  run = RunDirectory(str(tmp_path))
  _record(run)
  run.write_history([{"epoch": 1, "auc": 0.7}])
  run.write_history(run.history() + [{"epoch": 2, "auc": 0.6}])
  assert [h["epoch"] for h in run.history()] == [1, 2]
  os.makedirs(run.checkpoints_dir)
  (tmp_path / "notes.txt").write_text("mine")
  run.clear()
  assert not run.has_run() and run.history() == []
  assert not os.path.exists(run.checkpoints_dir)
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_data_fingerprints_change_with_a_vocabulary(planted_data_dir, tmp_path):
  import shutil
  copy = str(tmp_path / "copy")
  shutil.copytree(planted_data_dir, copy)
  before = preprocessed.fingerprints(copy)
  assert before == preprocessed.fingerprints(planted_data_dir)
  data = preprocessed.PreprocessedData(copy)
  field = data.spec.vocabulary_fields[0].name
  with open(data.vocab_path(field), "a") as f:
    f.write("a_new_value\n")
  after = preprocessed.fingerprints(copy)
  assert after["vocabularies"] != before["vocabularies"]
  assert after["spec"] == before["spec"]


@pytest.mark.parametrize("value", ["a\tb", "x\\ny", "line\nbreak", "\r\n", "\\", "plain",
                                   "ü\\t\t", "\\\\n", ""])
def test_vocabulary_escaping_round_trips_any_string(value):
  import tensorflow as tf
  escaped = preprocessed.escape_value(value)
  assert "\n" not in escaped and "\t" not in escaped and "\r" not in escaped
  assert preprocessed.unescape_value(escaped) == value
  assert preprocessed.escape_tensor(tf.constant([value])).numpy()[0].decode() == escaped
