"""Test set-up shared by the whole suite.

Legacy Keras must be selected before TensorFlow is first imported, and the host CPU is
split into two logical devices so MirroredStrategy tests have two replicas to mirror.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hmdn.features  # noqa: E402,F401  (selects legacy Keras before TensorFlow loads)

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by an earlier import
    pass

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def planted_data_dir(tmp_path_factory):
  """A small preprocessed synthetic dataset (planted hierarchy), shared by the suite."""
  from hmdn.beam_jobs import preprocess, synthetic_logs
  from hmdn.beam_jobs.config import PreprocessConfig
  root = tmp_path_factory.mktemp("planted")
  synthetic_logs.generate(str(root / "raw"), synthetic_logs.GeneratorConfig(
      rows=6000, seed=1))
  out = str(root / "data")
  preprocess.run(PreprocessConfig(
      raw=str(root / "raw" / "raw" / "*.csv"), output_dir=out,
      spec_path=str(root / "raw" / "spec.yaml"), direct_num_workers=1))
  return out


TWO_TASK_SPEC = {"name": "two_tasks", "features": [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "purchase", "kind": "numeric", "role": "label", "after": "click"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "channel", "kind": "categorical", "distribution_level": 1},
    {"name": "item", "kind": "categorical"},
    {"name": "uid", "kind": "categorical", "user_id": True},
]}


@pytest.fixture(scope="session")
def two_task_data_dir(tmp_path_factory):
  """A preprocessed log of two tasks (click; purchase, observed after a click) whose
  rates depend on scenario, channel and item: 6000 rows, numpy-drawn."""
  import numpy as np
  import yaml
  from hmdn.beam_jobs import preprocess
  from hmdn.beam_jobs.config import PreprocessConfig
  root = tmp_path_factory.mktemp("two_tasks")
  (root / "spec.yaml").write_text(yaml.safe_dump(TWO_TASK_SPEC))
  rng = np.random.default_rng(3)
  n = 6000
  scenario, channel, item = (rng.integers(0, 3, n), rng.integers(0, 6, n),
                             rng.integers(0, 40, n))
  item_effect = rng.normal(0, 1, 40)
  ctr = 1 / (1 + np.exp(-(-1.0 + 0.5 * scenario - 0.3 * (channel % 3) + item_effect[item])))
  cvr = 1 / (1 + np.exp(-(-1.5 + 1.2 * item_effect[item] - 0.4 * scenario)))
  click = rng.random(n) < ctr
  purchase = click & (rng.random(n) < cvr)
  lines = ["click,purchase,scenario,channel,item,uid"] + [
      f"{int(c)},{int(p)},s{s},c{s}_{ch},i{it},u{i % 300}" for i, (c, p, s, ch, it)
      in enumerate(zip(click, purchase, scenario, channel, item))]
  (root / "log.csv").write_text("\n".join(lines) + "\n")
  out = str(root / "data")
  preprocess.run(PreprocessConfig(
      raw=str(root / "log.csv"), output_dir=out, spec_path=str(root / "spec.yaml"),
      direct_num_workers=1, tfds=False))
  return out


@pytest.fixture(scope="session")
def mirrored_strategy():
  """ONE MirroredStrategy over the two logical CPUs for the whole session: separate
  strategy objects in one process reuse collective instance keys and abort each other."""
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
