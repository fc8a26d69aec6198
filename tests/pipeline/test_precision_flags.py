"""--mixed_precision and --jit_compile from the trainer's side (CPU: bfloat16)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hmdn.features.run_directory import RunDirectory
from hmdn.models.registry import ModelConfig
from hmdn.pipeline import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mixed_bfloat16_training_keeps_float32_variables_and_restores_the_policy(
    planted_data_dir, tmp_path):
  config = train.TrainConfig(
      data_dir=planted_data_dir, model_dir=str(tmp_path / "bf16"), epochs=1,
      steps_per_epoch=3, batch_size=128, mixed_precision="mixed_bfloat16",
      model=ModelConfig.of(name="hmdn_moe", codebook_warmup_steps=1))
  model = train.train(config)
  assert tf.keras.mixed_precision.global_policy().name == "float32"
  assert model.backbone.compute_dtype == "bfloat16"
  assert all(v.dtype == tf.float32 for v in model.variables if v.dtype.is_floating)
  summary = json.load(open(RunDirectory(config.model_dir).summary_path))
  assert np.isfinite(summary["final"]["auc"])


def test_a_precision_outside_the_choices_is_refused(planted_data_dir, tmp_path):
  config = train.TrainConfig(data_dir=planted_data_dir, model_dir=str(tmp_path / "x"),
                             mixed_precision="float8")
  with pytest.raises(ValueError, match=r"--mixed_precision='float8': expected one of"):
    config.validate()


def test_jit_compile_trains_with_xla_auto_clustering_on_cpu(planted_data_dir, tmp_path):
  env = dict(os.environ, TF_XLA_FLAGS="--tf_xla_cpu_global_jit")
  proc = subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "train", f"--data_dir={planted_data_dir}",
       f"--model_dir={tmp_path / 'jit'}", "--model=moe", "--epochs=1",
       "--steps_per_epoch=3", "--batch_size=128", "--jit_compile"],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.load(open(RunDirectory(str(tmp_path / "jit")).summary_path))
  assert np.isfinite(summary["final"]["auc"])
