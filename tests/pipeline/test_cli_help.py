"""`hmdn` help: the commands with a line each, and each command's own flags with their
defaults and choices; both on stdout with exit status 0."""
import os
import subprocess
import sys

import pytest

from hmdn.pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def helps(capsys):
  """cli._parse_flags on an argv -> (exit code, stdout)."""
  def run(*args):
    cli.FLAGS.unparse_flags()
    try:
      with pytest.raises(SystemExit) as exit_info:
        cli._parse_flags(["hmdn", *args])
    finally:
      cli.FLAGS.unparse_flags()
    return exit_info.value.code, capsys.readouterr().out
  return run


@pytest.mark.parametrize("args", [(), ("--help",), ("-h",)])
def test_hmdn_lists_every_command_with_a_line(helps, args):
  code, out = helps(*args)
  assert code == 0
  lines = out.splitlines()
  for name, command in cli.COMMANDS.items():
    assert any(l.split()[:1] == [name] and command.help in l for l in lines), name


def test_a_command_lists_its_own_flags_with_defaults_and_choices(helps):
  code, out = helps("train", "--help")
  assert code == 0
  assert out.startswith("usage: hmdn train")
  assert "--batch_size: GLOBAL batch size" in out and "(default: '512')" in out
  assert "one of: constant, cosine" in out  # --lr_schedule's choices
  assert "--model: " in out and "--codebook_warmup_steps" in out  # ModelConfig's
  assert "--rows" not in out and "--runner" not in out  # other commands' flags
  code, out = helps("predict", "--help")
  assert code == 0 and "--saved_model" in out and "--batch_size" not in out


def test_every_command_has_help_naming_only_defined_flags(helps):
  for name, command in cli.COMMANDS.items():
    code, out = helps(name, "--help")
    assert code == 0 and command.help in out, name
    for group in command.flag_groups:
      for flag in group.names:
        assert flag in cli.FLAGS, (name, flag)
  assert "Beam" in helps("preprocess", "--help")[1]


def test_the_console_script_exits_0_on_help():
  for args in ([], ["run", "--help"]):
    proc = subprocess.run([sys.executable, "-m", "hmdn.pipeline.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: hmdn"), proc.stdout[:200]
