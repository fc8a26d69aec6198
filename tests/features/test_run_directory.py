"""The run-directory contract: records, contradictions, fingerprints, relative paths."""
import os

import pytest

from hmdn.features import preprocessed
from hmdn.features import options
from hmdn.features.run_directory import (RunDirectory, RunMismatchError, absolute,
                                         model_config_from_record)
from hmdn.models.registry import ModelConfig


def _record(run, **model):
  """A record in the flat layout of the versions before the nested HMDRR config."""
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
  assert run.check_model({}, ModelConfig).name == "hmdn_moe"
  # Tuples and lists of the same values are the same option.
  recorded = run.check_model({"model": "hmdn_moe", "view_units": (64,)}, ModelConfig)
  assert recorded.hmdrr.quantizer.num_levels == 4


@pytest.mark.parametrize("given,message", [
    ({"model": "dnn"}, r"--model=dnn contradicts the run in .*--model=hmdn_moe"),
    ({"num_levels": 6}, r"--num_levels=6 contradicts .* --num_levels=4"),
    ({"codebook_warmup_steps": 6}, r"--codebook_warmup_steps=6 contradicts .*=100"),
])
def test_a_contradicting_flag_names_both_values(tmp_path, given, message):
  run = RunDirectory(str(tmp_path))
  _record(run)
  with pytest.raises(RunMismatchError, match=message):
    run.check_model(given, ModelConfig)


def test_a_given_flag_the_runs_model_does_not_use_is_refused(tmp_path):
  run = RunDirectory(str(tmp_path))
  _record(run, name="moe")
  with pytest.raises(RunMismatchError, match=r"--num_levels does not apply: "
                     r"--model=moe is not an HMDN model"):
    run.check_model({"num_levels": 4}, ModelConfig)


def test_an_old_flat_record_loads_as_the_nested_config():
  old = {"name": "hmdn_moe", "output_dim": 8, "backbone_kwargs": {}, "condition": "all",
         "cross_buckets": 1000, "cross_dim": 16, "extraction": "explicit",
         "implicit_fields": [], "distribution_dim": 8, "view_units": [16],
         "num_levels": 2, "codebook_size": 4, "shared_codebook": False,
         "codebook_update": "ema", "decay": 0.9, "beta": 0.25,
         "commitment_weight": 1.0, "aux_weight": 0.5, "codebook_warmup_steps": 7,
         "kmeans_iterations": 5, "restart_after_steps": 100, "buffer_size": 64,
         "hmdn_condition": "concat", "seed": 3}
  config = model_config_from_record(old, ModelConfig)
  assert (config.name, config.condition, config.seed) == ("hmdn_moe", "all", 3)
  assert config.hmdrr.extraction == "explicit" and config.hmdrr.view_units == (16,)
  q = config.hmdrr.quantizer
  assert (q.num_levels, q.codebook_size, q.decay, q.warmup_steps, q.buffer_size) == (
      2, 4, 0.9, 7, 64)
  # This version's record: nested, and read back the same.
  assert model_config_from_record(options.to_record(config), ModelConfig) == config
  with pytest.raises(RunMismatchError, match=r"does not know: \['codebook_sizes'\]"):
    model_config_from_record(dict(old, codebook_sizes=4), ModelConfig)


def test_the_record_holds_only_the_options_the_model_uses():
  dnn = options.to_record(ModelConfig.of(name="dnn"))
  assert "hmdrr" not in dnn and "condition" not in dnn and "aux_weight" not in dnn
  moe = options.to_record(ModelConfig.of(name="moe", condition="cross"))
  assert moe["condition"] == "cross" and "cross_buckets" in moe and "hmdrr" not in moe
  hmdn = options.to_record(ModelConfig.of(name="hmdn_moe", extraction="explicit"))
  assert hmdn["hmdrr"]["quantizer"]["warmup_steps"] == 100
  assert "cross_buckets" not in hmdn and "aux_weight" not in hmdn  # no implicit view
  assert model_config_from_record(dnn, ModelConfig) == ModelConfig.of(name="dnn")


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
