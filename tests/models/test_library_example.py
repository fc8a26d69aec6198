"""docs/library.md's example runs as written, in a fresh process (a user's own script)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example() -> str:
  with open(os.path.join(ROOT, "docs", "library.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
  assert len(blocks) == 1, "docs/library.md should hold exactly one python example"
  return blocks[0]


def test_library_example_runs_as_written(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  proc = subprocess.run([sys.executable, "-c", _example()], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "codes of the first example:" in proc.stdout
  assert (tmp_path / "my_hmdn_model.keras").exists()
  level_one = re.search(r"distinct level-1 explicit codes: \[([\d ]+)\]", proc.stdout)
  assert level_one and len(level_one.group(1).split()) >= 2, proc.stdout


def test_keras3_before_hmdn_fails_with_one_sentence(tmp_path):
  script = ("import os; os.environ['TF_USE_LEGACY_KERAS'] = '0'\n"
            "import tensorflow as tf; tf.keras.layers.Dense\n"
            "import hmdn.models\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("ImportError: hmdn needs tf-keras 2"), last
  assert "TF_USE_LEGACY_KERAS=1" in last


def test_installed_as_one_namespace():
  """The distribution installs one top-level package, hmdn (no generic `models`)."""
  import importlib.metadata
  import hmdn.models
  top_level = importlib.metadata.distribution("hmdn").read_text("top_level.txt")
  assert top_level.split() == ["hmdn"], top_level
  assert hmdn.models.HierarchicalDistributionRepresentation.__module__ == (
      "hmdn.models.hierarchical")


def test_every_layer_docs_library_md_lists_imports_from_hmdn_models():
  import hmdn.models
  with open(os.path.join(ROOT, "docs", "library.md")) as f:
    table = [line for line in f if line.startswith("| ")]
  names = {n for line in table
           for n in re.findall(r"`([A-Z][A-Za-z]+)`", line.split("|")[1])}
  assert {"ESMM", "TargetAttention", "MaskedMeanPooling", "CTRModel"} <= names
  missing = sorted(n for n in names if not hasattr(hmdn.models, n))
  assert not missing, f"docs/library.md lists {missing}, not importable from hmdn.models"
