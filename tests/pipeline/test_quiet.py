"""`hmdn` prints its own output only; --verbosity brings the libraries' lines back."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOISE = ("oneDNN", "cuda", "absl::InitializeLog", "WARNING:tensorflow")


def _train(tmp_path, *extra):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "train", f"--data_dir={tmp_path}/none",
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


def _preprocess_with_two_workers(tmp_path, *extra):
  """`hmdn preprocess` with 2 DirectRunner worker processes (they inherit stderr)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  raw = tmp_path / "raw"
  if not raw.exists():
    subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", "generate",
                    f"--output_dir={raw}", "--rows=2000", "--seed=0"], check=True,
                   capture_output=True, cwd=REPO, env=env, timeout=300)
  from hmdn.beam_jobs import generated_logs
  return subprocess.run(
      [sys.executable, "-m", "hmdn.pipeline.cli", "preprocess",
       f"--raw={generated_logs.raw_glob(str(raw))}",
       f"--spec={generated_logs.spec_path(str(raw))}",
       f"--data_dir={tmp_path}/data{len(extra)}", "--direct_num_workers=2", *extra],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_beam_worker_processes_print_no_start_up_lines(tmp_path):
  proc = _preprocess_with_two_workers(tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.strip() == "", proc.stderr[-2000:]
  assert "Beam job done" in proc.stdout
  loud = _preprocess_with_two_workers(tmp_path, "--verbosity=0")
  assert loud.returncode == 0, loud.stderr[-2000:]
  assert "Logging handler created." in loud.stderr, loud.stderr[-2000:]


def test_stderr_lines_pass_while_the_beam_block_runs_and_noise_does_not(capfd):
  """A line written to fd 2 (as a Beam worker process does) inside the block reaches
  the real stderr before the block ends, not when it ends; the workers' start-up
  lines never do."""
  import time
  from hmdn.pipeline import quiet
  capfd.readouterr()
  with quiet.beam_worker_noise_filtered(["hmdn"]):
    os.write(2, b"INFO Logging handler created.\n")
    os.write(2, b"a warning during the job\n")
    deadline = time.monotonic() + 10
    seen = ""
    while "a warning during the job" not in seen and time.monotonic() < deadline:
      time.sleep(0.05)
      seen += capfd.readouterr().err
    assert "a warning during the job\n" in seen, seen  # before the block ended
    os.write(2, b"a last line without newline")
  seen += capfd.readouterr().err
  assert "Logging handler created." not in seen
  assert seen.endswith("a last line without newline"), seen
  os.write(2, b"after\n")  # stderr is back to the real one
  assert capfd.readouterr().err == "after\n"


def test_tf_function_renaming_numeric_field_names_is_not_printed():
  """Ali-CCP's field names ("101", "121", ...) are valid signature inputs; TensorFlow's
  absl warning that it renames tf.function's Python arguments says nothing to a user."""
  code = ("import sys; from hmdn.pipeline import quiet; quiet.silence_libraries(sys.argv);"
          "import tensorflow; from absl import logging;"
          "logging.use_absl_handler(); logging.set_verbosity(logging.WARNING);"
          "logging.warning('`121` is not a valid tf.function parameter name. Sanitizing');"
          "logging.warning('a warning of our own')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "a warning of our own" in proc.stderr
  assert "not a valid tf.function parameter name" not in proc.stderr
