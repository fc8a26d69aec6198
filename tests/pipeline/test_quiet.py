"""`hmdn` prints its own output only; --verbosity brings the libraries' lines back."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOISE = ("oneDNN", "cuda", "absl::InitializeLog", "WARNING:tensorflow")


def _train(tmp_path, *extra):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run(
      [sys.executable, "-m", "pipeline.cli", "train", f"--data_dir={tmp_path}/none",
       f"--model_dir={tmp_path}/m", *extra], capture_output=True, text=True, cwd=REPO,
      env=env, timeout=300)


def test_a_command_prints_no_library_noise(tmp_path):
  proc = _train(tmp_path)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "not a complete preprocessing output" in lines[0], lines


def test_verbosity_brings_the_library_lines_back(tmp_path):
  proc = _train(tmp_path, "--verbosity=0")
  assert proc.returncode == 2
  assert any(word in proc.stderr for word in NOISE), proc.stderr[-500:]
