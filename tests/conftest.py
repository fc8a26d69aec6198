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


@pytest.fixture(scope="session")
def mirrored_strategy():
  """ONE MirroredStrategy over the two logical CPUs for the whole session: separate
  strategy objects in one process reuse collective instance keys and abort each other."""
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
