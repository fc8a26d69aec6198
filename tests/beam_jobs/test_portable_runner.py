"""The preprocess job through Beam's portable job API, the path Flink and Spark take.

An SDK worker pool is started on a free loopback port; the job runs once with
`--runner=PortableRunner --job_endpoint=embed --environment_type=EXTERNAL` against it
and once on the local runner, and both outputs must be the same: the records of each
split, the vocabularies, the derived tables and the metadata's counts.
"""
import glob
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from hmdn.beam_jobs import preprocess, synthetic_logs
from hmdn.beam_jobs.config import PreprocessConfig
from hmdn.features.preprocessed import SPLITS, PreprocessedData
from split_reader import serialized_records  # noqa: E402  (the tests' one split reader)

ROWS = 3000
POOL_START_S = 30.0
# A count_bucket and a mode field on the generated log, so that tables are compared too.
DERIVED = [
    {"name": "user_activity", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "count_bucket", "source": "user_id", "boundaries": [2, 5]}},
    {"name": "user_top_device", "kind": "categorical", "embedding_dim": 2,
     "derived": {"kind": "mode", "source": "user_id", "of": "device"}},
]


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, pool: subprocess.Popen) -> None:
  deadline = time.monotonic() + POOL_START_S
  while time.monotonic() < deadline:
    if pool.poll() is not None:
      raise RuntimeError(f"the worker pool exited with {pool.returncode}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.1)
  raise RuntimeError(f"the worker pool did not listen on port {port}")


@pytest.fixture(scope="module")
def log(tmp_path_factory):
  root = tmp_path_factory.mktemp("portable")
  synthetic_logs.generate(str(root / "raw"), synthetic_logs.GeneratorConfig(
      rows=ROWS, seed=3))
  spec = yaml.safe_load((root / "raw" / "spec.yaml").read_text())
  spec["features"] += DERIVED
  spec_path = root / "spec.yaml"
  spec_path.write_text(yaml.safe_dump(spec))
  return {"root": root, "raw": str(root / "raw" / "raw" / "*.csv"),
          "spec": str(spec_path)}


def _run(log, out, beam_args=()):
  return preprocess.run(PreprocessConfig(
      raw=log["raw"], output_dir=out, spec_path=log["spec"], direct_num_workers=1,
      tfds=False), list(beam_args))


def _records(data: PreprocessedData, split: str):
  return sorted(serialized_records(data.data_dir, split))


def _text_files(directory: str):
  out = {}
  for path in sorted(glob.glob(os.path.join(directory, "*"))):
    with open(path, "rb") as f:
      out[os.path.basename(path)] = f.read()
  return out


def test_portable_runner_output_equals_the_local_runner(log):
  port = _free_port()
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  pool = subprocess.Popen(
      [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
       f"--service_port={port}"], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    _wait_for_port(port, pool)
    portable = str(log["root"] / "portable")
    meta_portable = _run(log, portable, [
        "--runner=PortableRunner", "--job_endpoint=embed",
        "--environment_type=EXTERNAL", f"--environment_config=localhost:{port}"])
  finally:
    pool.kill()
    pool.wait(timeout=10)
  local = str(log["root"] / "local")
  meta_local = _run(log, local)

  for key in ("rows_read", "rows_written", "rows_rejected", "vocab_sizes", "tables",
              "side_files"):
    assert meta_portable[key] == meta_local[key], key
  assert meta_local["rows_read"] == ROWS
  a, b = PreprocessedData(portable), PreprocessedData(local)
  assert a.metadata["rows_written"] == b.metadata["rows_written"]
  for split in SPLITS:
    assert _records(a, split) == _records(b, split), split
  assert _text_files(a.vocab_dir) == _text_files(b.vocab_dir)
  tables = _text_files(a.tables_dir)
  assert set(tables) == {"user_activity.txt", "user_top_device.txt"}
  # a table's lines are written in no fixed order: compared as sets of lines.
  assert ({k: sorted(v.splitlines()) for k, v in tables.items()}
          == {k: sorted(v.splitlines()) for k, v in _text_files(b.tables_dir).items()})
  for key in ("vocab_sizes", "distinct_train", "missing", "distribution"):
    assert a.stats[key] == b.stats[key], key
  for field, moments in b.stats["numeric"].items():  # sums merged in another order
    assert a.stats["numeric"][field] == pytest.approx(moments, rel=1e-9), field
