"""TFDS metadata of the job's uncompressed shards: the dataset name, the feature
connectors of the tf.Examples, and dataset_info.json from the workers' shard counts.
TensorFlow and TFDS are imported inside the functions: they load only with `--tfds`."""
import re
from typing import Dict, List

from hmdn.features import spec as spec_lib
from hmdn.features.preprocessed import PreprocessedData


def tfds_name(spec: spec_lib.FeatureSpec) -> str:
  """The TFDS dataset name of a spec (TFDS names are snake_case identifiers)."""
  name = re.sub(r"\W+", "_", spec.name).strip("_").lower()
  return name if name[:1].isalpha() else f"hmdn_{name}"


def tfds_features(spec: spec_lib.FeatureSpec):
  """The TFDS feature connectors of the tf.Examples the job writes (every field)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  features = {}
  for f in spec.features:
    if f.kind == spec_lib.NUMERIC:
      features[f.name] = tfds.features.Scalar(dtype=tf.float32)
    elif f.kind in (spec_lib.MULTI_CATEGORICAL, spec_lib.SEQUENCE):
      features[f.name] = tfds.features.Sequence(tfds.features.Text())
    else:
      features[f.name] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


def write_tfds_metadata(data: PreprocessedData, spec: spec_lib.FeatureSpec,
                        shards: Dict[str, List]) -> str:
  """TFDS' dataset_info.json and features.json for the uncompressed shards in
  `data.tfds_dir`, from the per-shard counts the workers reported (no file is read)."""
  import tensorflow_datasets as tfds
  split_infos = []
  for split, rows in sorted(shards.items()):
    rows = sorted(rows, key=lambda r: r[1])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[int(r[2]) for r in rows],
        num_bytes=sum(int(r[3]) for r in rows)))
  tfds.folder_dataset.write_metadata(
      data_dir=data.tfds_dir, features=tfds_features(spec),
      split_infos=split_infos, check_data=False,
      description=f"hmdn preprocess output of spec {spec.name!r}")
  return data.tfds_dir
