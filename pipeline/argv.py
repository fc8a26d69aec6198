"""The `hmdn` command line's grammar: the command table's entries, argv into our flags,
Beam's pipeline options and the command's arguments, and the help of each command.

Our flags are absl flags (defined in pipeline/cli.py from the config dataclasses). A
command takes only the flags of its groups (a flag of another command, which it would
ignore, is an error naming the commands it is for). An unknown flag is an error naming
the closest known one, except that a command marked
`beam` passes Beam the pipeline options Beam itself recognises (e.g.
--runner=DataflowRunner), and anything after a bare `--` unchecked; no other command
imports Beam. Beam's options are known through its public API: the parser
`PipelineOptions.get_all_options` builds, handed to its `add_extra_args_fn` hook.
"""
import argparse
import dataclasses
import difflib
import logging
import sys
import textwrap
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from absl import flags

FLAGS = flags.FLAGS
HELP_FLAGS = ("--help", "-help", "-h", "-?")
WIDTH = 88


@dataclasses.dataclass(frozen=True)
class FlagGroup:
  """Flags listed together in a command's help: a config's, or a command's own."""
  title: str
  names: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Command:
  """One `hmdn` command: its name, one line of help, the flags it reads, its function
  (called with the positional arguments when `args` is set, else with none)."""
  name: str
  help: str
  run: Callable[..., None]
  flag_groups: Tuple[FlagGroup, ...] = ()
  beam: bool = False  # runs a Beam pipeline: takes Beam's pipeline options too
  args: str = ""  # the positional arguments it takes (usage text), if any

  @property
  def flag_names(self) -> Tuple[str, ...]:
    """Every flag of its groups: the only flags of ours it accepts."""
    return tuple(n for group in self.flag_groups for n in group.names)


# --- Help --------------------------------------------------------------------------------
def commands_help(commands: Mapping[str, Command]) -> str:
  """`hmdn` / `hmdn --help`: one line per command."""
  width = max(len(name) for name in commands)
  lines = ["usage: hmdn COMMAND [--flags]", "", "commands:"]
  lines += [f"  {name.ljust(width)}  {c.help}" for name, c in commands.items()]
  lines += ["", "`hmdn COMMAND --help` lists that command's flags; `hmdn --helpfull` "
            "every flag."]
  return "\n".join(lines)


def _flag_help(name: str, flag_values) -> str:
  flag = flag_values[name]
  facts = [f"default: {flag.default_as_str or 'none'}"]
  choices = getattr(flag.parser, "enum_values", None)
  if choices:
    facts.append(f"one of: {', '.join(choices)}")
  text = flag.help
  if choices and text.startswith("<"):  # absl's "<a|b>: " prefix: listed as one of
    text = text.split(">: ", 1)[-1]
  text = f"{text} ({'; '.join(facts)})"
  return "\n".join(textwrap.wrap(text, WIDTH, initial_indent=f"  --{name}: ",
                                 subsequent_indent="      "))


def command_help(command: Command, flag_values=FLAGS) -> str:
  """`hmdn CMD --help`: the command's own flags, with defaults and choices."""
  lines = [f"usage: hmdn {command.name}"
           + (f" {command.args}" if command.args else "") + " [--flags]",
           "", command.help]
  for group in command.flag_groups:
    names = [n for n in group.names if n in flag_values]
    if names:
      lines += ["", f"{group.title}:"] + [_flag_help(n, flag_values) for n in names]
  if command.beam:
    lines += ["", "Beam: the pipeline options Beam recognises (e.g. --runner=...); "
              "anything after a bare -- goes to Beam unchecked."]
  return "\n".join(lines)


def _print_help_and_exit(argv: Sequence[str], commands: Mapping[str, Command]) -> None:
  """`hmdn`, `hmdn --help`, `hmdn CMD --help`: the help on stdout, exit status 0."""
  words = list(argv[1:argv.index("--", 1)] if "--" in argv[1:] else argv[1:])
  asked = any(w in HELP_FLAGS for w in words)
  if words and not asked:
    return
  command = next((w for w in words if w in commands), None)
  print(command_help(commands[command]) if command else commands_help(commands))
  sys.exit(0)


# --- Beam's options ----------------------------------------------------------------------
def beam_option_parser() -> argparse.ArgumentParser:
  """The argparse parser of every option Beam's PipelineOptions recognise, as Beam
  builds it (public hook: `get_all_options(add_extra_args_fn=...)` receives it)."""
  logging.disable(logging.WARNING)  # Beam's import warns about optional GCP libs
  try:
    # Imported here: only the Beam commands load Beam. The package import registers
    # the PipelineOptions of every Beam module.
    import apache_beam  # noqa: F401  pylint: disable=g-import-not-at-top
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  finally:
    logging.disable(logging.NOTSET)
  built: List[argparse.ArgumentParser] = []
  PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
  parser = built[0]
  parser.exit_on_error = False  # a bad value raises argparse.ArgumentError
  return parser


def beam_option_names() -> List[str]:
  """The names of Beam's pipeline options (for "did you mean")."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top: Beam commands only
  return sorted(PipelineOptions([]).get_all_options(drop_default=False))


# --- Parsing -----------------------------------------------------------------------------
def unknown_flags_message(unknown: Sequence[str], known: Sequence[str]) -> str:
  """"unknown flag --epoch (did you mean --epochs?)", for each unknown flag."""
  parts = []
  for arg in unknown:
    name = arg.split("=", 1)[0].lstrip("-")
    close = difflib.get_close_matches(name, known, n=1)
    if not close and name.startswith("no"):  # --noflag, a boolean set false
      close = difflib.get_close_matches(name[2:], known, n=1)
    parts.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
  return f"unknown flag{'s' * (len(parts) > 1)} {', '.join(parts)}; see --helpfull"


def _flags_of_other_commands(command: Optional[str], commands: Mapping[str, Command],
                              flag_values) -> Optional[str]:
  """"--eval_fraction is not a flag of train (it is one of preprocess, run)": a flag
  of ours (defined in an hmdn module) given to a command that would ignore it. The
  flags of absl and other libraries (--verbosity, --logtostderr) stay accepted."""
  if command is None:
    return None
  own = set(commands[command].flag_names)
  ours = {f.name for module, defined in flag_values.flags_by_module_dict().items()
          if module.startswith("hmdn") for f in defined}
  given = sorted(n for n in ours - own if flag_values[n].present)
  if not given:
    return None
  parts = []
  for name in given:
    takers = [c.name for c in commands.values() if name in c.flag_names]
    parts.append(f"--{name}" + (f" (a flag of {', '.join(takers)})" if takers else ""))
  return (f"{'flags' if len(parts) > 1 else 'flag'} {', '.join(parts)} "
          f"{'are' if len(parts) > 1 else 'is'} not for {command}: it would ignore "
          f"{'them' if len(parts) > 1 else 'it'}; see hmdn {command} --help")


def parse(argv: List[str], commands: Mapping[str, Command], beam_args: List[str],
          flag_values=FLAGS) -> List[str]:
  """Parses our flags into `flag_values` and sets `beam_args` to what goes to Beam;
  returns [program, command, positional arguments...]. A bad or unknown flag is one
  line on stderr and exit status 2, like other bad input."""
  _print_help_and_exit(argv, commands)
  command: Optional[str] = next((a for a in argv[1:] if a in commands), None)
  beam_commands = [name for name, c in commands.items() if c.beam]

  def fail(message) -> None:
    print(f"{' '.join(['hmdn'] + [command] * bool(command))}: error: {message}",
          file=sys.stderr)
    sys.exit(2)

  passthrough: List[str] = []
  if "--" in argv[1:]:
    cut = argv.index("--", 1)
    argv, passthrough = argv[:cut], argv[cut + 1:]
  try:
    rest = flag_values(argv, known_only=True)
  except flags.Error as e:
    fail(e)
  # The command as parsed: a word that is the value of a flag (--input run) is not it.
  command = next((a for a in rest[1:] if a in commands), None)
  positional = [a for a in rest[1:] if not a.startswith("-")]
  unknown = [a for a in rest[1:] if a.startswith("-")]
  known = list(flag_values)
  found_beam: List[str] = []
  if unknown and command in beam_commands:  # the only commands that import Beam
    candidates = list(rest[1:])
    candidates.remove(command)  # Beam takes options only, some with a separate value
    try:
      _, not_beam = beam_option_parser().parse_known_args(candidates)
    except argparse.ArgumentError as e:
      fail(f"Beam pipeline option: {e}")
    found_beam = candidates
    unknown = [a for a in not_beam if a.startswith("-")]
    positional = [command] + [a for a in not_beam if not a.startswith("-")]
    known += beam_option_names()
  if unknown:
    message = unknown_flags_message(unknown, known)
    if command not in beam_commands and message.count("did you mean") < len(unknown):
      message += f" (Beam pipeline options are for {' and '.join(beam_commands)} only)"
    fail(message)
  foreign = _flags_of_other_commands(command, commands, flag_values)
  if foreign:
    fail(foreign)
  if passthrough and command not in beam_commands:
    fail(f"arguments after -- go to Beam, and only {' and '.join(beam_commands)} run "
         f"a Beam pipeline: {passthrough}")
  beam_args[:] = found_beam + passthrough
  return [rest[0]] + positional
