"""absl flags generated from config dataclasses, and the dataclasses built back from them.

Each default, help text and list of choices lives once, on the dataclass field
(`features.options.option(default, help, choices)`, a dataclass field); the flag is
derived from it, as tensorflow/models `official/` builds its params from flags.

Field types: str, int, float, bool (plain flags), str with `choices` (an enum flag),
`Optional[...]` of these (default None), `Dict[...]` (a JSON object string) and
`Tuple[T, ...]` (a comma-separated list). A `nested(...)` field's config gives flat
flags of its own fields (ModelConfig.hmdrr: --num_levels, ...), with the defaults of the
nested field's default; other fields holding a dataclass are skipped: the caller builds
that one from its own class (TrainConfig.model). Flag names are the field's declared
`flag` (`option(flag="model")`) or its name, unless a `rename` map says otherwise. A flag
name two configs use is an error unless the later one lists it in `shared` (e.g.
`--seed`): then one flag sets both fields.
"""
import dataclasses
import json
import typing
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import flags

from hmdn.features import options

FLAGS = flags.FLAGS
_MISSING = dataclasses.MISSING
_DEFINED: Dict[str, str] = {}  # flag name -> kind, of the flags made here (shareable)


def _unwrap_optional(tp):
  """Optional[T] -> T; other types unchanged."""
  if typing.get_origin(tp) is typing.Union:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0]
  return tp


def _kind(tp) -> str:
  tp = _unwrap_optional(tp)
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    return "dataclass"
  if tp in (dict, Dict) or origin in (dict, Mapping):
    return "json"
  if origin in (tuple, list) or tp in (tuple, list):
    return "tuple"
  if tp in (bool, int, float, str):
    return tp.__name__
  raise TypeError(f"config_flags: no flag type for {tp!r}")


def _element_type(tp):
  args = [a for a in typing.get_args(_unwrap_optional(tp)) if a is not Ellipsis]
  return args[0] if args else str


def _default(field: dataclasses.Field):
  if field.default is not _MISSING:
    return field.default
  if field.default_factory is not _MISSING:  # type: ignore[misc]
    return field.default_factory()  # type: ignore[misc]
  return None  # a required field: the command checks that the flag is given


def choices_of(field: dataclasses.Field) -> Optional[Sequence[str]]:
  """The field's choices (a sequence, or a callable returning one), if it has any."""
  choices = field.metadata.get("choices")
  if callable(choices):
    choices = choices()
  return list(choices) if choices is not None else None


def flag_name(field: dataclasses.Field, rename: Optional[Mapping[str, str]]) -> str:
  return (rename or {}).get(field.name, options.flag_of(field))


def _fields(cls, rename, skip, defaults=None):
  """(field, type, kind, flag name, default) of every flag-backed field, nested ones
  flat; `defaults` is the instance a nested field's defaults come from."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if not field.init or field.name in skip:
      continue
    default = (getattr(defaults, field.name) if defaults is not None else
               _default(field))
    if options.is_nested(field):
      yield from _fields(hints[field.name], rename, skip, default)
      continue
    kind = _kind(hints[field.name])
    if kind == "dataclass":
      continue
    yield field, hints[field.name], kind, flag_name(field, rename), default


def define_flags(cls, rename: Optional[Mapping[str, str]] = None,
                 shared: Sequence[str] = (), skip: Sequence[str] = (),
                 flag_values=FLAGS) -> None:
  """Defines one flag per field of the dataclass `cls` (see the module docstring)."""
  for field, tp, kind, name, default in _fields(cls, rename, skip):
    choices = choices_of(field)
    if choices is not None:
      kind = "enum"
    if name in flag_values:
      if name not in shared or _DEFINED.get(name) != kind:
        raise ValueError(f"{cls.__name__}.{field.name}: flag --{name} is already "
                         f"defined ({_DEFINED.get(name, 'not by a config')}); rename "
                         "the flag, or list it as shared if one flag must set both")
      continue  # shared with a config defined earlier (e.g. --seed)
    _DEFINED[name] = kind
    help_text = field.metadata.get("help") or f"{cls.__name__}.{field.name}"
    if kind == "json":
      default = json.dumps(default if default is not None else {})
      help_text += " (a JSON object)"
    elif kind == "tuple":
      default = [str(v) for v in (default or ())]
      help_text += " (comma-separated)"
    # Listed under the config's name in --helpfull (e.g. pipeline.train.TrainConfig).
    flags.DEFINE_flag(_make_flag(kind, name, default, help_text, choices), flag_values,
                      module_name=f"{cls.__module__}.{cls.__name__}")


def _make_flag(kind: str, name: str, default, help_text: str, choices) -> flags.Flag:
  if kind == "enum":
    return flags.EnumFlag(name, default, help_text, choices)
  if kind == "bool":
    return flags.BooleanFlag(name, default, help_text)
  if kind == "tuple":
    return flags.Flag(flags.ListParser(), flags.CsvListSerializer(","), name, default,
                      help_text)
  parser = {"int": flags.IntegerParser, "float": flags.FloatParser}.get(
      kind, flags.ArgumentParser)()
  return flags.Flag(parser, flags.ArgumentSerializer(), name, default, help_text)


def _value(field, tp, kind, name, flag_values) -> Any:
  value = flag_values[name].value
  if kind == "json":
    try:
      value = json.loads(value) if value else {}
    except ValueError as e:
      raise ValueError(f"--{name} is not valid JSON: {e}")
    if not isinstance(value, dict):
      raise ValueError(f"--{name}: expected a JSON object, got {value!r}")
  elif kind == "tuple":
    element = _element_type(tp)
    try:
      value = tuple(element(v) for v in (value or []))
    except ValueError:
      raise ValueError(f"--{name}: expected comma-separated {element.__name__} values, "
                       f"got {','.join(value)!r}")
  return value


def from_flags(cls, rename: Optional[Mapping[str, str]] = None, flag_values=FLAGS,
               **values):
  """An instance of `cls` with every flag-backed field (nested configs' too) read from
  the parsed flags; `values` sets the others (e.g. TrainConfig.model) or overrides."""
  kwargs = dict(values)
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if field.init and field.name not in values and options.is_nested(field):
      kwargs[field.name] = from_flags(hints[field.name], rename, flag_values)
  for field, tp, kind, name, _ in _fields(cls, rename, skip=tuple(kwargs)):
    kwargs[field.name] = _value(field, tp, kind, name, flag_values)
  return cls(**kwargs)


def flag_names(cls, rename: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """{field name: flag name} of the flag-backed fields of `cls`, nested ones flat."""
  return {f.name: name for f, _, _, name, _ in _fields(cls, rename, ())}


def given(cls, rename: Optional[Mapping[str, str]] = None, flag_values=FLAGS
          ) -> Dict[str, str]:
  """{field name: flag name} of the fields of `cls` whose flag is on the command line."""
  return {field: name for field, name in flag_names(cls, rename).items()
          if flag_values[name].present}
