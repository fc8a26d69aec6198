"""Ordinary faults end in one line and exit status 2 (pipeline/faults.py, the CLI's
run_main), and a failed write leaves no temporary file (issue 22, items 1, 2, 6).

Full disk and read-only output are injected as OSError at the write layer (the tests
run as root, where chmod does not bite, and CI may not mount a tmpfs). The CLI runs in
this process (flags reset before each call), on one small trained run."""
import errno
import re
import os
import shutil
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from hmdn.features import fileio, locks, options, ownership
from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData
from hmdn.models import embedding
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import cli, compare, export, faults, train, train_config

MODEL_FLAGS = ["--model=moe", "--epochs=1", "--steps_per_epoch=2", "--batch_size=256"]


def hmdn(capsys, command, *flags):
  """`hmdn COMMAND FLAGS...` in this process -> (exit status, stderr lines)."""
  cli.FLAGS.unparse_flags()
  cli.FLAGS(["hmdn", *flags])
  try:
    cli.main(["hmdn", command])
    code = 0
  except SystemExit as e:
    code = e.code
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  return code, err


def _only_line(err, *parts):
  """The one error line, holding every part."""
  lines = [line for line in err if line.startswith("hmdn ")]
  assert len(lines) == 1, err
  for part in parts:
    assert part in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module", autouse=True)
def _flags_reset():
  """The flags this module parsed are not left to the next test file in the process."""
  yield
  cli.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def trained(planted_data_dir, tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("faults") / "model")
  train.train(train.TrainConfig(data_dir=planted_data_dir, model_dir=model_dir,
                                model=ModelConfig(name="moe"), epochs=1,
                                steps_per_epoch=2, batch_size=256))
  return planted_data_dir, model_dir


def test_describe_os_and_tensorflow_errors():
  assert faults.describe(OSError(errno.ENOSPC, "No space left on device", "/d/x")) == (
      "/d/x: no space left on the device; free some space or write elsewhere")
  assert "read-only" in faults.describe(OSError(errno.EROFS, "Read-only", "/d/x"))
  assert faults.describe(IsADirectoryError(errno.EISDIR, "Is a directory", "/d")) == (
      "/d: is a directory, not a file")
  graph_error = tf.errors.DataLossError(None, None, (
      "Graph execution error:\n\nDetected at node 'Restore' defined at (most recent call "
      "last):\n  File \"a.py\", line 1, in <module>\n    restore()\nChecksum does not "
      "match: stored 1 vs. calculated 2 in /m/final.data\n\t [[{{node RestoreV2}}]]"))
  line = faults.describe(graph_error)
  assert "\n" not in line and line.startswith("Checksum does not match") and (
      "/m/final.data" in line and "truncated or corrupt" in line)
  assert faults.describe(KeyError("x")) is None


def test_second_train_is_refused_naming_the_holder(capsys, trained, tmp_path):
  data_dir, _ = trained
  model_dir = str(tmp_path / "model")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(model_dir)
    with open(locks.lock_path(model_dir), "w") as f:
      f.write('{"pid": %d, "host": "%s", "started": "2026-12-02 13:00:00 UTC"}' % (
          holder.pid, socket.gethostname()))
    code, err = hmdn(capsys, "train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                     *MODEL_FLAGS)
  finally:
    holder.kill()
    holder.wait()
  assert code == 2
  _only_line(err, f"--model_dir={model_dir}", f"pid {holder.pid}", "2026-12-02 13:00")
  assert os.listdir(model_dir) == [locks.LOCK_FILE]  # nothing written beside the lock


def test_train_refuses_a_folder_of_the_users(capsys, trained, tmp_path):
  data_dir, _ = trained
  user = tmp_path / "mine"
  user.mkdir()
  (user / "notes.txt").write_text("mine")
  for extra in ([], ["--overwrite"]):
    code, err = hmdn(capsys, "train", f"--data_dir={data_dir}", f"--model_dir={user}",
                     *MODEL_FLAGS, *extra)
    assert code == 2
    _only_line(err, f"--model_dir={user}", "was not written by hmdn", "'notes.txt'")
  assert sorted(os.listdir(user)) == ["notes.txt"]


def test_train_full_disk_leaves_no_partial_checkpoint(capsys, trained, tmp_path,
                                                      monkeypatch):
  """TensorFlow writes a checkpoint's shards into `<prefix>_temp/` first: a full disk
  there left `checkpoints/best_temp/` behind."""
  data_dir, _ = trained
  model_dir = tmp_path / "model"

  def full_disk(model, path, *args, **kwargs):
    os.makedirs(path + "_temp")
    open(os.path.join(path + "_temp", "part-00000-of-00001.data-00000-of-00001"),
         "w").write("half")
    raise OSError(errno.ENOSPC, "No space left on device", path + "_temp")

  monkeypatch.setattr(tf.keras.Model, "save_weights", full_disk)
  code, err = hmdn(capsys, "train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                   *MODEL_FLAGS)
  assert code == 2
  _only_line(err, "best_temp: no space left on the device")
  assert not [p for p in model_dir.rglob("*_temp*")]
  assert not (model_dir / locks.LOCK_FILE).exists()  # the lock went with the process


def test_read_only_output_is_one_line(capsys, trained, tmp_path, monkeypatch):
  data_dir, model_dir = trained
  real = fileio.write_text_atomic

  def read_only(path, text):
    if path.startswith(str(tmp_path)):
      raise OSError(errno.EROFS, "Read-only file system", path)
    return real(path, text)

  monkeypatch.setattr(fileio, "write_text_atomic", read_only)
  out = tmp_path / "metrics.json"
  code, err = hmdn(capsys, "evaluate", f"--data_dir={data_dir}",
                   f"--model_dir={model_dir}", f"--output={out}")
  assert code == 2
  _only_line(err, f"{out}: the file system is read-only")
  code, err = hmdn(capsys, "train", f"--data_dir={data_dir}",
                   f"--model_dir={tmp_path / 'ro_model'}", *MODEL_FLAGS)
  assert code == 2
  _only_line(err, "ro_model/.hmdn-output.json: the file system is read-only")


def test_export_faults(capsys, trained, tmp_path, monkeypatch):
  data_dir, model_dir = trained
  a_file = tmp_path / "a_file"
  a_file.write_text("mine")
  code, err = hmdn(capsys, "export", f"--data_dir={data_dir}",
                   f"--model_dir={model_dir}", f"--export_dir={a_file}")
  assert code == 2
  _only_line(err, f"--export_dir={a_file} is a file, not a directory")
  assert a_file.read_text() == "mine"

  root = tmp_path / "export"
  real_save = tf.saved_model.save

  def full_disk(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)  # half of the version is on disk
    raise OSError(errno.ENOSPC, "No space left on device", path)

  monkeypatch.setattr(tf.saved_model, "save", full_disk)
  code, err = hmdn(capsys, "export", f"--data_dir={data_dir}",
                   f"--model_dir={model_dir}", f"--export_dir={root}")
  assert code == 2
  _only_line(err, "no space left on the device")
  assert sorted(os.listdir(root)) == [ownership.MARKER_FILE]  # no .tmp-<version>/


def test_evaluate_output_that_is_a_directory(capsys, trained, tmp_path):
  data_dir, model_dir = trained
  out = tmp_path / "out"
  out.mkdir()
  code, err = hmdn(capsys, "evaluate", f"--data_dir={data_dir}",
                   f"--model_dir={model_dir}", f"--output={out}")
  assert code == 2
  _only_line(err, f"{out}: is a directory, not a file")
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no out.tmp


@pytest.mark.parametrize("part", [".index", ".data-00000-of-00001"])
def test_truncated_checkpoint(capsys, trained, tmp_path, part):
  data_dir, model_dir = trained
  copy = tmp_path / "copy"
  shutil.copytree(model_dir, copy)
  final = copy / "checkpoints" / ("final" + part)
  with open(final, "r+b") as f:
    f.truncate(final.stat().st_size // 3)
  code, err = hmdn(capsys, "evaluate", f"--data_dir={data_dir}", f"--model_dir={copy}")
  assert code == 2
  _only_line(err, f"{copy}/checkpoints/final cannot be read", "truncated or corrupt")


def test_truncated_backup_of_an_unfinished_run(capsys, trained, tmp_path):
  data_dir, model_dir = trained
  copy = tmp_path / "unfinished"
  shutil.copytree(model_dir, copy)
  for final in (copy / "checkpoints").glob("final.*"):
    final.unlink()
  prefix = tf.train.Checkpoint(step=tf.Variable(tf.zeros([4096]))).save(
      str(copy / "backup" / "chief" / "ckpt"))
  data = tf.io.gfile.glob(prefix + ".data-*")[0]
  with open(data, "r+b") as f:
    f.truncate(100)
  code, err = hmdn(capsys, "train", f"--data_dir={data_dir}", f"--model_dir={copy}")
  assert code == 2
  _only_line(err, f"{prefix}: the backup of the unfinished run", "truncated or corrupt",
             "--overwrite")


def test_evaluate_export_on_another_datasets_data(trained, tmp_path):
  data_dir, _ = trained
  version = tmp_path / "export" / "1"
  spec = PreprocessedData(data_dir).spec
  other = spec.to_dict()
  other["name"] = "other"
  other["features"] = other["features"][:-1] + [dict(other["features"][-1],
                                                     name="renamed")]
  (version / export.ASSETS_EXTRA).mkdir(parents=True)
  spec_lib.spec_from_dict(other).save(export.spec_path(str(version)))
  with pytest.raises(ValueError, match=f"--data_dir={data_dir} holds data of the spec"):
    export.check_data(str(version), data_dir)
  spec.save(export.spec_path(str(version)))
  export.check_data(str(version), data_dir)  # its own spec's data


def test_embedding_table_too_large_is_refused_before_allocation(trained):
  data_dir, _ = trained
  spec = PreprocessedData(data_dir).spec
  d = spec.to_dict()
  name = spec.embedded_fields[0].name
  for f in d["features"]:
    if f["name"] == name:
      f["embedding_dim"] = 1_000_000_000_000
  huge = spec_lib.spec_from_dict(d)
  with pytest.raises(ValueError, match=f"field {name!r}: embedding_dim 1,000,000,000,000"):
    embedding.check_fits_memory(huge, {name: 100})
  embedding.check_fits_memory(spec, {name: 100})  # the real spec fits
  data = PreprocessedData(data_dir)
  with pytest.raises(ValueError, match="lower embedding_dim"):  # the layer checks it
    embedding.FeatureEmbeddings(huge.to_dict(), data.vocab_dir, data.numeric_moments,
                                tables_dir=data.tables_dir)


def test_compare_refuses_an_earlier_report_without_overwrite(tmp_path):
  report = tmp_path / "report"
  (report / "runs" / "moe" / "seed_0").mkdir(parents=True)
  (report / "results.json").write_text("{}")
  (report / "report.md").write_text("old")
  (report / "deltas.png").write_text("old")
  with pytest.raises(ValueError, match="holds an earlier report; pass --overwrite"):
    compare.claim_report(str(report), overwrite=False)
  assert (report / "report.md").read_text() == "old"
  compare.claim_report(str(report), overwrite=True)
  assert os.listdir(report) == [ownership.MARKER_FILE]  # old runs removed too
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.md").write_text("mine")
  with pytest.raises(ownership.ForeignDirectoryError, match="'notes.md'"):
    compare.claim_report(str(tmp_path / "mine"), overwrite=True)
  assert os.listdir(tmp_path / "mine") == ["notes.md"]


def test_generate_writes_only_into_its_own_directory(capsys, tmp_path):
  user = tmp_path / "mine"
  user.mkdir()
  (user / "spec.yaml").write_text("my own spec\n")
  code, err = hmdn(capsys, "generate", f"--output_dir={user}", "--rows=200")
  assert code == 2
  _only_line(err, f"--output_dir={user}", "not written by hmdn")
  assert (user / "spec.yaml").read_text() == "my own spec\n"
  assert sorted(os.listdir(user)) == ["spec.yaml"]

  out = tmp_path / "log"
  assert hmdn(capsys, "generate", f"--output_dir={out}", "--rows=200")[0] == 0
  first = (out / "generator.json").read_text()
  code, err = hmdn(capsys, "generate", f"--output_dir={out}", "--rows=300")
  assert code == 2
  _only_line(err, "holds a log generated earlier", "--overwrite")
  assert (out / "generator.json").read_text() == first
  assert hmdn(capsys, "generate", f"--output_dir={out}", "--rows=300",
              "--overwrite")[0] == 0
  assert '"rows": 300' in (out / "generator.json").read_text()


def _fake_version(root, number, config, spec):
  """A version directory as `export` leaves it, as far as check_same_model reads it."""
  version = root / str(number)
  (version / export.ASSETS_EXTRA).mkdir(parents=True)
  (version / export.SAVED_MODEL_FILE).write_bytes(b"")
  fileio.write_json_atomic(export.model_config_path(str(version)),
                           options.to_record(config))
  spec.save(export.spec_path(str(version)))


def test_export_of_another_model_or_spec_beside_a_served_one_is_refused(trained, tmp_path):
  """TF Serving serves the newest version: a different model (other outputs) or spec
  (other inputs) exported into the same root would switch its clients silently."""
  data_dir, _ = trained
  spec = PreprocessedData(data_dir).spec
  root = tmp_path / "export"
  export.check_same_model(str(root), ModelConfig(name="moe"), spec)  # no root yet
  _fake_version(root, 1, ModelConfig(name="hmdn_moe"), spec)
  export.check_same_model(str(root), ModelConfig.of(name="hmdn_moe", view_units=[16]), spec)
  with pytest.raises(ValueError, match=re.escape(
      f"--export_dir={root}: its newest version 1 serves model 'hmdn_moe', not this "
      "run's model 'moe'")):
    export.check_same_model(str(root), ModelConfig(name="moe"), spec)
  with pytest.raises(ValueError, match="serves model 'hmdn_moe' with codes"):
    export.check_same_model(str(root), ModelConfig.of(name="hmdn_moe", quantize=False),
                            spec)
  other = spec.to_dict()
  other["name"] = "other"
  other["features"] = other["features"][:-1] + [dict(other["features"][-1],
                                                     name="renamed")]
  with pytest.raises(ValueError, match="serves spec '.*' \\(fingerprint"):
    export.check_same_model(str(root), ModelConfig(name="hmdn_moe"),
                            spec_lib.spec_from_dict(other))
  assert sorted(p.name for p in root.iterdir()) == ["1"]  # nothing written or removed


def test_task_options_the_labels_cannot_use_are_refused_before_any_work(trained, tmp_path):
  data_dir, _ = trained  # one task: click
  for model, match in (
      (ModelConfig.of(name="dnn", cvr_loss="masked"),
       "--cvr_loss=masked does not apply: the spec has one task (click)"),
      (ModelConfig.of(name="moe", task_tower_units=[16, 8]),
       "--task_tower_units=16,8 does not apply: the spec has one task"),
      (ModelConfig.of(name="hmdn_moe", task_dim=4), "--task_dim=4 does not apply"),
      (ModelConfig(name="esmm"), "--model=esmm: ESMM models a task observed after"),
      # the spec has no sequence: a pooling other than the default would be ignored
      (ModelConfig.of(name="hmdn_moe", sequence_pooling="mean"),
       "--sequence_pooling=mean does not apply: spec "),
      (ModelConfig.of(name="dnn", din_units=[8]), "--din_units=8 does not apply"),
  ):
    model_dir = tmp_path / model.name
    with pytest.raises(ValueError, match=re.escape(match)):
      train.train(train.TrainConfig(data_dir=data_dir, model_dir=str(model_dir),
                                    model=model, epochs=1, steps_per_epoch=1))
    assert not model_dir.exists()
  with pytest.raises(ValueError, match=re.escape("--cvr_loss=both does not apply")):
    compare.run(train.TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "r"),
                                  epochs=1, steps_per_epoch=1),
                ["moe", "dnn:cvr_loss=both"], [0], str(tmp_path / "report"))
  with pytest.raises(ValueError, match=re.escape("--sequence_pooling=none does not")):
    compare.run(train.TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "r"),
                                  epochs=1, steps_per_epoch=1),
                ["moe", "moe:sequence_pooling=none"], [0], str(tmp_path / "report"))
  assert not (tmp_path / "report").exists()



def test_a_resumed_run_refuses_a_training_flag_that_changes_it(trained, capsys, tmp_path):
  """The backup restores an unfinished run's optimizer and schedule: a new
  --learning_rate would be dropped without a word, so it is refused; an omitted flag
  takes the recorded value, and a flag that does not shape the run may change."""
  data_dir, _ = trained
  model_dir = tmp_path / "unfinished"
  model_dir.mkdir()
  record = {"model_name": "moe", "model": options.to_record(ModelConfig(name="moe")),
            "config": {"learning_rate": 0.002, "epochs": 3, "batch_size": 256}}
  fileio.write_json_atomic(str(model_dir / "run_config.json"), record)
  before = sorted(p.name for p in model_dir.iterdir())
  code, err = hmdn(capsys, "train", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                   "--learning_rate=0.01", "--epochs=3")
  assert code == 2 and len(err) == 1, err
  assert ("--learning_rate=0.01 contradicts the run in "
          f"{model_dir}, trained with --learning_rate=0.002") in err[0]
  assert sorted(p.name for p in model_dir.iterdir()) == before
  from hmdn.features.run_directory import RunDirectory
  kept = RunDirectory(str(model_dir)).check_training(
      {"epochs": 3, "keep_checkpoints": 9}, train_config.RUN_SHAPING)
  assert kept == {"learning_rate": 0.002, "epochs": 3, "batch_size": 256}
