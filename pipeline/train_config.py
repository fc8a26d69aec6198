"""The trainer's options (`hmdn train` flags come from these fields)."""
import dataclasses

from hmdn.features.options import option, validate
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import data, optimizers, strategies

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# The options that shape a run's trajectory: a resumed run keeps its recorded values
# (its backup restores the optimizer and the schedule), and a flag that differs is
# refused (`RunDirectory.check_training`). The others (devices, checkpoints kept, backup
# frequency, input caching, steps per execution, XLA) may change between attempts.
RUN_SHAPING = ("batch_size", "learning_rate", "optimizer", "lr_schedule", "warmup_steps",
               "epochs", "steps_per_epoch", "early_stopping_patience", "select_by",
               "seed", "shuffle_window", "mixed_precision", "deterministic")




@dataclasses.dataclass
class TrainConfig:
  data_dir: str = option(help="Preprocessed data (output of `preprocess`).")
  model_dir: str = option(help="Checkpoints, TensorBoard logs, run config.")
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  strategy: str = option("default", "tf.distribute strategy; multi-worker ones read "
                         "TF_CONFIG.", strategies.STRATEGIES)
  tpu: str = option("", "tpu: the TPU name or grpc:// address.")
  num_devices: int = option(0, "mirrored: number of devices (0 = all GPUs).", minimum=0)
  batch_size: int = option(512, "GLOBAL batch size (over all replicas).", minimum=1)
  learning_rate: float = option(2e-3, "Learning rate for the global batch.", above=0)
  optimizer: str = option("adam", "adam: Adam on every weight (each step decays the "
                          "moments of every row of every embedding table: its cost "
                          "grows with the tables); lazy_adam: Adam's update on only "
                          "the embedding rows the batch looked up (dense weights: "
                          "Adam). For tables of 100k rows and more.",
                          optimizers.OPTIMIZERS)
  lr_schedule: str = option("constant", "Learning rate schedule (cosine decays to 0 "
                            "over the run, after --warmup_steps).", LR_SCHEDULES)
  warmup_steps: int = option(0, "Linear warm-up steps of the cosine schedule.", minimum=0)
  epochs: int = option(3, "Training epochs.", minimum=1)
  steps_per_epoch: int = option(0, "0 = one pass over the training split.", minimum=0)
  early_stopping_patience: int = option(0, "Stop after N epochs without a better exact "
                                        "eval AUC (0 = off).", minimum=0)
  select_by: str = option("first", "Several tasks: the exact eval AUC that picks the "
                          "best checkpoint and stops early: first (the first task's), "
                          "mean (of every task's), a task's name (over every row; a "
                          "task after another: CTCVR) or <task>_cvr (a task after "
                          "another, over its prerequisite's positives). Checked "
                          "against the spec's tasks; one task: first only.")
  keep_checkpoints: int = option(3, "Epoch checkpoints kept.", minimum=0)
  backup_every_steps: int = option(0, "Fault-tolerance backup frequency in steps (0 = "
                                   "each epoch).", minimum=0)
  ps_min_shard_bytes: int = option(256 << 10, "parameter_server: embedding tables "
                                   "larger than this are sharded across the PS tasks.",
                                   minimum=0)
  seed: int = option(0, "Seed of data generation, initialisation and shuffling.",
                     minimum=0)
  cache_input: bool = option(False, "Keep the training split's serialized records in "
                             "memory after the first pass (no more reading or "
                             "decompression; each epoch a uniform shuffle of the whole "
                             "split). For data that fits in memory.")
  shuffle_window: int = option(data.SHUFFLE_WINDOW_RECORDS, "Training records read "
                               "in a row that are put in a random order at once "
                               "(streamed input; up to about 3 windows are held in "
                               "memory).", minimum=1)
  steps_per_execution: int = option(1, "Training steps per call into TensorFlow: fewer "
                                    "Python round trips between steps (the callbacks "
                                    "work per epoch; --backup_every_steps is rounded "
                                    "down to a multiple of it).", minimum=1)
  mixed_precision: str = option(
      "float32", "Keras dtype policy: mixed_float16 (GPU) or mixed_bfloat16 (TPU, recent "
      "CPUs) compute in 16 bits with float32 variables; the quantizer's distances, "
      "codebooks, the logit head and the losses stay float32.", PRECISIONS)
  jit_compile: bool = option(False, "XLA auto-clustering: compile the numeric parts of "
                             "the step (string lookups stay outside). GPU/TPU; on CPU "
                             "only with TF_XLA_FLAGS=--tf_xla_cpu_global_jit.")
  deterministic: bool = option(False, "Same seed, same model: training batches in a "
                               "fixed order and TensorFlow ops deterministic "
                               "(tf.config.experimental.enable_op_determinism, for the "
                               "whole process). Slower input; for comparisons.")
  overwrite: bool = option(False, "Replace what an earlier hmdn command wrote in the "
                           "output directory (a directory hmdn did not write is always "
                           "refused). train: a --model_dir holding a finished run or "
                           "another run (other model or data), its outputs removed "
                           "first; without it such a directory is refused and an "
                           "unfinished run of the same model and data is resumed. "
                           "preprocess: a complete --data_dir; generate: a generated "
                           "log; compare: an earlier report and its runs; run: all of these, "
                           "and its earlier export versions (--keep_export_versions).")

  def validate(self) -> "TrainConfig":
    """The declared rules (`features.options.validate`), before any work; each error
    names the flag and its value. The model config checks itself."""
    validate(self)
    if self.warmup_steps and self.lr_schedule != "cosine":
      raise ValueError(f"--warmup_steps={self.warmup_steps}: the learning-rate warm-up "
                       "is part of --lr_schedule=cosine (the constant schedule has "
                       "none); drop it or add --lr_schedule=cosine")
    return self
