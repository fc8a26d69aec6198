"""tf.distribute strategies by name, created once per process.

| name                   | where                                  | cluster from          |
|------------------------|----------------------------------------|-----------------------|
| default                | one device                             | -                     |
| mirrored               | all local GPUs, or N (logical) devices | -                     |
| multi_worker_mirrored  | synchronous data parallel, N workers   | TF_CONFIG             |
| parameter_server       | async, variables (and sharded embedding tables) on PS tasks | TF_CONFIG |
| tpu                    | a TPU (not runnable here)              | --tpu address         |

Batch size is always GLOBAL: the sum over all replicas of one synchronous step.
"""
import json
import os
from typing import Optional

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu")


def split_cpu(num_devices: int) -> None:
  """Splits the host CPU into logical devices (MirroredStrategy without GPUs).

  Must run before TensorFlow initialises its devices.
  """
  if num_devices > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def cluster_task() -> Optional[dict]:
  """This process's {"type", "index"} from TF_CONFIG, or None outside a cluster."""
  tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
  return tf_config.get("task")


def is_chief() -> bool:
  """The process that writes checkpoints, logs and exports (chief, or worker 0)."""
  task = cluster_task()
  if not task:
    return True
  tf_config = json.loads(os.environ["TF_CONFIG"])
  has_chief = "chief" in tf_config.get("cluster", {})
  return task["type"] == "chief" or (not has_chief and task["type"] == "worker" and
                                     int(task["index"]) == 0)


def serve_forever_if_server_task(strategy_name: str) -> None:
  """Parameter-server training: worker and ps tasks only host a server; never returns."""
  task = cluster_task()
  if strategy_name != "parameter_server" or not task or task["type"] not in ("worker",
                                                                                "ps"):
    return
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if task["type"] == "worker":
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
  server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                task_index=resolver.task_id,
                                protocol=resolver.rpc_layer or "grpc", start=True)
  server.join()


def make_strategy(name: str, num_devices: int = 0, tpu: str = "",
                  min_shard_bytes: int = 256 << 10) -> tf.distribute.Strategy:
  """Creates the strategy; everything that creates variables runs in its scope."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    if num_devices > 1:
      gpus = tf.config.list_logical_devices("GPU")
      kind = "GPU" if len(gpus) >= num_devices else "CPU"
      devices = [d.name for d in tf.config.list_logical_devices(kind)][:num_devices]
      if len(devices) < num_devices:
        raise ValueError(f"--num_devices={num_devices} but only {len(devices)} {kind} "
                         "devices exist (pass --cpu_devices to split the CPU)")
      return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker_mirrored":
    if not cluster_task():
      raise ValueError("--strategy=multi_worker_mirrored needs TF_CONFIG with the "
                       "cluster and this process's task")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "parameter_server":
    if not cluster_task():
      raise ValueError("--strategy=parameter_server needs TF_CONFIG (chief, worker and "
                       "ps tasks)")
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
    if num_ps < 1:
      raise ValueError("--strategy=parameter_server: TF_CONFIG has no ps task")
    # Embedding tables larger than min_shard_bytes are split across the PS tasks.
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=num_ps)
    return tf.distribute.ParameterServerStrategy(resolver,
                                                 variable_partitioner=partitioner)
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"--strategy: unknown strategy {name!r}; expected one of {STRATEGIES}")
