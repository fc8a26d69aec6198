"""`hmdn` flags: an unknown flag is a one-line error naming the closest known flag, for
every command; `preprocess` and `run` also take the options Beam recognises (and anything
after `--`); no other command imports Beam to decide."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from hmdn.pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pythonpath() -> str:
  """ROOT before the caller's path: a checkout whose package is mapped by PYTHONPATH
  (a worktree of an editable install) runs its own code in the subprocess too."""
  return os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture
def parse(capsys):
  """cli._parse_flags on an argv -> (exit code or None, stderr lines, Beam args, argv)."""
  def run(*args):
    cli.FLAGS.unparse_flags()
    cli._BEAM_ARGS[:] = []
    try:
      rest = cli._parse_flags(["hmdn", *args])
      code = None
    except SystemExit as e:
      rest, code = None, e.code
    finally:
      beam_args = list(cli._BEAM_ARGS)
      cli.FLAGS.unparse_flags()
      cli._BEAM_ARGS[:] = []
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    return code, err, beam_args, rest
  return run


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_misspelled_flags_fail_naming_the_known_ones(parse, command):
  code, err, _, _ = parse(command, "--epoch=1", "--batchsize=64", "--data_dir=x")
  assert code == 2
  assert len(err) == 1, err
  assert err[0].startswith(f"hmdn {command}: error: unknown flags")
  assert "--epoch (did you mean --epochs?)" in err[0]
  assert "--batchsize (did you mean --batch_size?)" in err[0]


def test_a_known_flag_still_parses(parse):
  code, err, beam_args, rest = parse("train", "--epochs=1", "--batch_size=64",
                                     "--data_dir=x", "--model_dir=y")
  assert (code, err, beam_args, rest) == (None, [], [], ["hmdn", "train"])


def test_a_bad_value_is_one_line(parse):
  code, err, _, _ = parse("train", "--epochs=many")
  assert code == 2 and len(err) == 1 and "--epochs" in err[0]


@pytest.mark.parametrize("command", ["preprocess", "run"])
def test_beam_options_go_to_beam_for_the_beam_commands(parse, command):
  code, err, beam_args, rest = parse(
      command, "--runner=DirectRunner", "--direct_running_mode", "in_memory", "--raw=r",
      "--spec=s", "--data_dir=d" if command == "preprocess" else "--output_dir=d", "--",
      "--anything_after_the_separator=1")
  assert code is None, err
  assert rest == ["hmdn", command]  # "in_memory" is an option's value, not an argument
  assert beam_args == ["--runner=DirectRunner", "--direct_running_mode", "in_memory",
                       "--anything_after_the_separator=1"]
  # Beam itself takes every one of them (the part before `--`) without a leftover.
  from apache_beam.options.pipeline_options import PipelineOptions
  options = PipelineOptions(beam_args[:3]).get_all_options()
  assert options["runner"] == "DirectRunner"
  assert options["direct_running_mode"] == "in_memory"


def test_an_option_beam_does_not_know_is_an_error(parse):
  code, err, _, _ = parse("preprocess", "--runnr=DirectRunner", "--raw=r")
  assert code == 2 and len(err) == 1
  assert "--runnr (did you mean --runner?)" in err[0]
  code, err, _, _ = parse("run", "--save_main_session=maybe")
  assert code == 2 and len(err) == 1 and "save_main_session" in err[0]


def test_beam_options_are_errors_for_other_commands(parse):
  code, err, _, _ = parse("train", "--runner=DirectRunner")
  assert code == 2 and "unknown flag --runner" in err[0]
  code, err, _, _ = parse("train", "--data_dir=x", "--", "--runner=DirectRunner")
  assert code == 2 and "--runner=DirectRunner" in err[0]


@pytest.mark.parametrize("command, flag, takers", [
    ("train", "--eval_fraction=0.5", "preprocess, run"),
    ("preprocess", "--epochs=2", "train, run, compare"),
    ("run", "--data_dir=d", "preprocess, train, evaluate, export, compare"),
    ("predict", "--model=dnn", "train, evaluate, export, run"),
    ("generate", "--seeds=0,1", "compare"),
])
def test_a_flag_of_another_command_is_refused_naming_it(parse, command, flag, takers):
  code, err, _, _ = parse(command, flag)
  name = flag.split("=")[0]
  assert code == 2 and len(err) == 1, err
  assert err[0] == (f"hmdn {command}: error: flag {name} (a flag of {takers}) is not "
                    f"for {command}: it would ignore it; see hmdn {command} --help")


def test_every_flag_a_command_lists_is_accepted_and_library_flags_too(parse):
  for command in cli.COMMANDS.values():
    own = [n for n in command.flag_names if n in cli.FLAGS]
    args = [cli.FLAGS[n].serialize() if cli.FLAGS[n].value is not None else f"--{n}=1"
            for n in own]
    code, err, _, _ = parse(command.name, *args, "--verbosity=0", "--logtostderr")
    assert (command.name, code, err) == (command.name, None, [])


def test_a_negative_cpu_devices_is_refused(parse):
  code, err, _, _ = parse("train", "--cpu_devices=-1")
  assert code == 2 and len(err) == 1 and "--cpu_devices=-1" in err[0]


def test_unexpected_positional_arguments_still_reach_main(parse):
  code, err, _, rest = parse("train", "extra")
  assert code is None and rest == ["hmdn", "train", "extra"]  # main: a usage error


SCRIPT = textwrap.dedent("""
    import json, sys
    from hmdn.pipeline import cli
    codes = []
    for argv in (["hmdn", "train", "--epoch=1"], ["hmdn", "evaluate", "--data_dir=x"],
                 ["hmdn", "predict", "--runner=DirectRunner"]):
      try:
        cli._parse_flags(argv)
        codes.append(0)
      except SystemExit as e:
        codes.append(e.code)
    print(json.dumps({"codes": codes, "beam": sorted(
        m for m in sys.modules if m.split(".")[0] == "apache_beam")}))
    """)


def test_other_commands_never_import_beam():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out == {"codes": [2, 0, 2], "beam": []}


def test_the_command_line_fails_in_one_line_and_helpfull_works(tmp_path):
  hmdn = [sys.executable, "-m", "hmdn.pipeline.cli"]
  proc = subprocess.run(hmdn + ["train", "--epoch=1", "--batchsize=64", "--data_dir=x",
                                "--model_dir=y"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=_pythonpath()))
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "--epochs" in last and "--batch_size" in last and "Traceback" not in proc.stderr
  proc = subprocess.run(hmdn + ["--helpfull"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert "--batch_size" in proc.stdout and "--codebook_warmup_steps" in proc.stdout


def test_generator_opt_in_flags_reach_the_generators_config(parse):
  """--conversion_rate etc. come from the generator configs' option() declarations."""
  try:
    cli.FLAGS.unparse_flags()
    cli._parse_flags(["hmdn", "generate", "--generator=longtail", "--rows=100",
                      "--conversion_rate=0.03", "--browsing=0.5"])
    generator, config = cli.generator_config()
    assert (generator.name, config.rows, config.conversion_rate, config.browsing,
            config.conversion_correlation) == ("longtail", 100, 0.03, 0.5, 0.5)
    cli.FLAGS.unparse_flags()
    cli._parse_flags(["hmdn", "generate", "--browsing=0.5"])
    with pytest.raises(ValueError, match=r"^--browsing: not an option of "
                       r"--generator=planted \(it takes --conversion_rate, "
                       r"--conversion_correlation\)$"):
      cli.generator_config()
    cli.FLAGS.unparse_flags()
    cli._parse_flags(["hmdn", "generate"])
    assert cli.generator_config()[1] == cli.generators.get("planted").config(
        rows=200_000, seed=0)
  finally:
    cli.FLAGS.unparse_flags()
  code, err, _, _ = parse("train", "--conversion_rate=0.03")
  assert code == 2 and "a flag of generate, run" in err[0], err


@pytest.mark.parametrize("flag", ["--model=moe", "--seed=7"])
def test_compare_refuses_the_train_flags_it_would_ignore(parse, flag):
  """compare trains --models over --seeds; train's --model and --seed would be ignored."""
  code, err, _, _ = parse("compare", "--data_dir=d", "--report_dir=r", "--models=dnn",
                          "--seeds=0,1", flag)
  assert code == 2 and len(err) == 1, err
  assert f"flag {flag.split('=')[0]} (a flag of" in err[0]
  assert err[0].endswith("is not for compare: it would ignore it; see hmdn compare --help")
