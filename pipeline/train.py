"""Training under a tf.distribute strategy chosen by name.

Batch-size semantics: `batch_size` is the GLOBAL batch (split across replicas by
tf.distribute); the learning rate applies to the mean loss over that global batch, so a
run on 1 or N replicas with the same global batch takes the same steps.
"""
import dataclasses
import json
import os
import platform
import sys
from typing import Dict, Optional

import tensorflow as tf

from beam_jobs import preprocess
from features import spec as spec_lib
from models.ctr_model import CTRModel
from models.registry import ModelConfig
from pipeline import data

STRATEGIES = ("default", "mirrored")


@dataclasses.dataclass
class TrainConfig:
  data_dir: str
  model_dir: str
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  strategy: str = "default"
  num_devices: int = 0  # mirrored: 0 = all local GPUs (or the CPU); N > 1 = N devices
  batch_size: int = 512  # global batch
  learning_rate: float = 1e-3
  epochs: int = 2
  steps_per_epoch: int = 0  # 0 = one pass over the training split
  seed: int = 0


def make_strategy(name: str, num_devices: int = 0) -> tf.distribute.Strategy:
  """Creates the strategy once; everything that creates variables runs in its scope."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    if num_devices > 1:
      gpus = tf.config.list_logical_devices("GPU")
      kind = "GPU" if len(gpus) >= num_devices else "CPU"
      devices = [d.name for d in tf.config.list_logical_devices(kind)][:num_devices]
      if len(devices) < num_devices:
        raise ValueError(f"--num_devices={num_devices} but only {len(devices)} {kind} "
                         "devices exist (set --cpu_devices to split the CPU)")
      return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()
  raise ValueError(f"--strategy: unknown strategy {name!r}; expected one of {STRATEGIES}")


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into logical devices (for MirroredStrategy without GPUs).

  Must run before TensorFlow initialises its devices.
  """
  if num_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def build_model(data_dir: str, model_config: ModelConfig) -> CTRModel:
  """The model for a preprocessing output: its spec, vocabularies and moments."""
  spec = spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))
  stats = preprocess.load_stats(data_dir)
  return CTRModel(spec, os.path.join(data_dir, "vocab"), stats["numeric"], model_config)


def record_run(model_dir: str, config: TrainConfig) -> None:
  """Writes the full config and the versions used into the run directory."""
  tf.io.gfile.makedirs(model_dir)
  import apache_beam
  import tensorflow_recommenders as tfrs
  record = {"config": dataclasses.asdict(config),
            "versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                         "tfrs": tfrs.__version__, "apache_beam": apache_beam.__version__,
                         "platform": platform.platform()},
            "argv": sys.argv}
  with tf.io.gfile.GFile(os.path.join(model_dir, "run_config.json"), "w") as f:
    f.write(json.dumps(record, indent=1, default=str))


def train(config: TrainConfig, strategy: Optional[tf.distribute.Strategy] = None
          ) -> CTRModel:
  """Trains and saves weights to `<model_dir>/checkpoints/`; returns the model."""
  tf.keras.utils.set_random_seed(config.seed)
  strategy = strategy or make_strategy(config.strategy, config.num_devices)
  metadata = preprocess.load_metadata(config.data_dir)
  spec = spec_lib.load_spec(os.path.join(config.data_dir, "spec.yaml"))
  record_run(config.model_dir, config)
  train_rows = metadata["rows_written"]["train"]
  if train_rows < config.batch_size:
    raise ValueError(f"--batch_size={config.batch_size} is larger than the training "
                     f"split ({train_rows} rows)")
  steps = config.steps_per_epoch or max(1, train_rows // config.batch_size)
  train_ds = data.make_dataset(config.data_dir, "train", spec, config.batch_size,
                               training=True, seed=config.seed)
  eval_ds = data.make_dataset(config.data_dir, "eval", spec, config.batch_size,
                              training=False)
  with strategy.scope():
    model = build_model(config.data_dir, config.model)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
  callbacks = [tf.keras.callbacks.TensorBoard(os.path.join(config.model_dir, "logs"),
                                              update_freq=max(1, steps // 10))]
  model.fit(train_ds, epochs=config.epochs, steps_per_epoch=steps,
            validation_data=eval_ds, callbacks=callbacks, verbose=2)
  model.save_weights(os.path.join(config.model_dir, "checkpoints", "final"))
  return model


def load_trained(data_dir: str, model_dir: str, model_config: ModelConfig) -> CTRModel:
  """Rebuilds the model and restores the weights `train` saved."""
  spec = spec_lib.load_spec(os.path.join(data_dir, "spec.yaml"))
  model = build_model(data_dir, model_config)
  features, _ = next(iter(data.make_dataset(data_dir, "eval", spec, 2, training=False)))
  model(features)  # creates the variables the checkpoint restores into
  path = os.path.join(model_dir, "checkpoints", "final")
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"no trained weights at {path}; run `hmdn train` first")
  model.load_weights(path).expect_partial()
  return model
