"""Fixtures of the CTRModel tests (test_ctr_model*.py): the suite's planted data
directory, its spec and 40 training batches of 256 rows."""
import pytest

from hmdn.features.preprocessed import PreprocessedData
from hmdn.pipeline import data


@pytest.fixture(scope="module")
def data_dir(planted_data_dir):
  return planted_data_dir


@pytest.fixture(scope="module")
def spec(data_dir):
  return PreprocessedData(data_dir).spec


@pytest.fixture(scope="module")
def batches(data_dir, spec):
  ds = data.make_dataset(data_dir, "train", spec, 256, training=True, seed=0)
  return list(ds.take(40))
