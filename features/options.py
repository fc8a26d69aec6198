"""One way to declare an option (a config dataclass field) and one way to check it.

`option(default, help, choices, minimum=..., ...)` states a field's default, help, flag
name and rules once: `pipeline/config_flags.py` makes the `hmdn` flag from it and
`validate(config)` checks a value against it, in a message naming the flag and the
value. Every config dataclass (PreprocessConfig, ModelConfig and its nested HMDRRConfig,
TrainConfig, the generators' configs) uses them. `nested(cls)` holds another config whose
options stay flat flags of their own names; `applies` says when an option is used at all,
so a flag given where it is not used is refused (`refuse_inapplicable`) and such an
option is left out of a run's record (`to_record`).
"""
import dataclasses
import math
import numbers
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

# applies(root_config) -> "" when the option is used, else why not (naming the model).
Applies = Callable[[Any], str]


def option(default: Any = dataclasses.MISSING, help: str = "",  # noqa: A002
           choices: Optional[Iterable] = None,
           factory: Optional[Callable[[], Any]] = None, *,
           minimum: Optional[float] = None, maximum: Optional[float] = None,
           above: Optional[float] = None, below: Optional[float] = None,
           flag: Optional[str] = None, applies: Optional[Applies] = None):
  """A dataclass field with its rules in `metadata`: `choices`; `minimum`/`maximum`
  (inclusive) and `above`/`below` (exclusive) bounds, on each element of a tuple;
  `flag`, its flag name when not the field's; `applies`, when it is used. `factory`
  instead of `default` for mutable defaults; no default = a required (non-empty) field."""
  metadata = {"help": help, "flag": flag, "applies": applies, "minimum": minimum,
              "maximum": maximum, "above": above, "below": below}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, help: str = "",  # noqa: A002
           applies: Optional[Applies] = None,
           factory: Optional[Callable[[], Any]] = None):
  """A field holding the config `cls` (by default `factory()`, else `cls()`), whose
  fields are options of their own names."""
  return dataclasses.field(default_factory=factory or cls, metadata={
      "help": help, "nested": True, "applies": applies})


def is_nested(field: dataclasses.Field) -> bool:
  return bool(field.metadata.get("nested"))


def flag_of(field: dataclasses.Field) -> str:
  """The option's flag name (without --)."""
  return field.metadata.get("flag") or field.name


def _options(cls) -> Iterable[Tuple[dataclasses.Field, Any]]:
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    if field.init:
      yield field, hints[field.name]


def leaves(cls) -> Dict[str, Tuple[Tuple[str, ...], dataclasses.Field]]:
  """{flag name: (field path, field)} of every option of `cls`, nested ones flat."""
  out = {}
  for field, tp in _options(cls):
    if is_nested(field):
      for flag, (path, leaf) in leaves(tp).items():
        out[flag] = ((field.name,) + path, leaf)
    elif not dataclasses.is_dataclass(tp):
      out[flag_of(field)] = ((field.name,), field)
  return out


# --- Checking a config ---------------------------------------------------------------
def _unwrap_optional(tp):
  if typing.get_origin(tp) is typing.Union:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0], True
  return tp, False


def _number_rule(meta) -> str:
  low = (f">= {meta['minimum']}" if meta.get("minimum") is not None else
         f"> {meta['above']}" if meta.get("above") is not None else "")
  high = (f"<= {meta['maximum']}" if meta.get("maximum") is not None else
          f"< {meta['below']}" if meta.get("below") is not None else "")
  if low and high:
    left = "[" if meta.get("minimum") is not None else "("
    right = "]" if meta.get("maximum") is not None else ")"
    return f"in {left}{low.split()[1]}, {high.split()[1]}{right}"
  return low or high


def _in_bounds(value, meta) -> bool:
  return not ((meta.get("minimum") is not None and value < meta["minimum"]) or
              (meta.get("maximum") is not None and value > meta["maximum"]) or
              (meta.get("above") is not None and value <= meta["above"]) or
              (meta.get("below") is not None and value >= meta["below"]))


def _scalar_problem(value, tp, meta) -> Optional[str]:
  """What `value` should be (for the message), or None if it is right."""
  rule = _number_rule(meta)
  if tp is bool:
    return None if isinstance(value, bool) else "true or false"
  if tp is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    return None if ok and _in_bounds(value, meta) else " ".join(
        ("an integer", rule)).strip()
  if tp is float:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and
          math.isfinite(value))
    return None if ok and _in_bounds(value, meta) else " ".join(
        ("a finite number", rule)).strip()
  if tp is str:
    if not isinstance(value, str):
      return "a string"
    choices = meta.get("choices")
    if choices is not None and value not in choices:
      return f"one of {tuple(choices)}"
    return None
  return None


def _problem(value, tp, field) -> Optional[str]:
  meta = field.metadata
  tp, optional = _unwrap_optional(tp)
  if value is None:
    return None if optional else "a value"
  origin = typing.get_origin(tp)
  if origin in (tuple, list) or tp in (tuple, list):
    element = next((a for a in typing.get_args(tp) if a is not Ellipsis), str)
    if not isinstance(value, (tuple, list)):
      return "a list"
    if any(_scalar_problem(v, element, meta) for v in value):
      return "a list of " + _scalar_problem(object(), element, meta).replace(
          "an integer", "integers").replace("a finite number", "finite numbers")
    return None
  if tp in (dict, Dict) or origin in (dict, Mapping):
    return None if isinstance(value, dict) else "a JSON object"
  problem = _scalar_problem(value, tp, meta)
  if problem is None and tp is str and field.default is dataclasses.MISSING and (
      field.default_factory is dataclasses.MISSING) and not value.strip():  # type: ignore
    return "a non-empty value"
  return problem


def validate(config, error: type = ValueError):
  """Checks every option of `config` (and of its nested configs) against its declared
  type and rules; raises `error` naming the flag and the value. Returns `config`.
  A config's own `validate()` calls this first, then checks what spans fields."""
  for field, tp in _options(type(config)):
    value = getattr(config, field.name)
    if is_nested(field):  # its own validate(), if it checks more than its fields
        value.validate() if hasattr(value, "validate") else validate(value, error)
        continue
    if dataclasses.is_dataclass(tp):
      continue  # a config of its own (TrainConfig.model), checked by its owner
    problem = _problem(value, tp, field)
    if problem:
      raise error(f"--{flag_of(field)}={value!r}: expected {problem}")
  return config


# --- Which options apply, given and recorded ------------------------------------------
def _why_unused(root, path: Tuple[str, ...]) -> str:
  """Why the option at `path` is unused by `root` ("" when it is used)."""
  owner = root
  for name in path:
    field = {f.name: f for f in dataclasses.fields(owner)}[name]
    applies = field.metadata.get("applies")
    why = applies(root) if applies else ""
    if why:
      return why
    owner = getattr(owner, name)
  return ""


def values_by_flag(config, applicable_only: bool = False) -> Dict[str, Any]:
  """{flag name: value} of the options of `config` (nested ones flat); only those
  that apply with `applicable_only`."""
  out = {}
  for flag, (path, _) in leaves(type(config)).items():
    if applicable_only and _why_unused(config, path):
      continue
    value = config
    for name in path:
      value = getattr(value, name)
    out[flag] = value
  return out


def refuse_inapplicable(config, given: Iterable[str], error: type = ValueError) -> None:
  """Raises `error` naming the first flag in `given` that `config` does not use."""
  known = leaves(type(config))
  for flag in given:
    if flag in known:
      why = _why_unused(config, known[flag][0])
      if why:
        raise error(f"--{flag} does not apply: {why}")


def to_record(config) -> Dict[str, Any]:
  """`dataclasses.asdict(config)` without the options that do not apply."""
  def record(owner, prefix):
    out = {}
    for field, _ in _options(type(owner)):
      path = prefix + (field.name,)
      if _why_unused(config, path):
        continue
      value = getattr(owner, field.name)
      if is_nested(field):
        out[field.name] = record(value, path)
      elif dataclasses.is_dataclass(value):
        out[field.name] = dataclasses.asdict(value)
      else:
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out
  return record(config, ())


def from_record(cls, values: Mapping[str, Any], error: type = ValueError, base=None):
  """`cls` built from a record (`to_record`, or the older flat layout: a nested
  config's options at the top, under their field or flag names); options missing
  from the record take their defaults (those of `base`, or of the nested field's
  default: ModelConfig's warm-up is not the layer's). An unknown key is an `error`."""
  top = {f.name: (f, tp) for f, tp in _options(cls)}
  by_name = {}
  for flag, (path, field) in leaves(cls).items():
    if len(path) > 1:
      by_name.setdefault(field.name, path)
      by_name.setdefault(flag, path)
  kwargs: Dict[str, Any] = {}
  inner: Dict[str, Dict[str, Any]] = {}
  unknown = []
  for key, value in values.items():
    if key in top and is_nested(top[key][0]) and isinstance(value, Mapping):
      inner.setdefault(key, {}).update(value)
    elif key in top:
      kwargs[key] = value
    elif key in by_name:
      path = by_name[key]
      target = inner.setdefault(path[0], {})
      for name in path[1:-1]:
        target = target.setdefault(name, {})
      target[path[-1]] = value
    else:
      unknown.append(key)
  if unknown:
    raise error(f"options this version does not know: {sorted(unknown)}")
  for name, (field, _) in top.items():
    if name not in kwargs and base is not None:
      kwargs[name] = getattr(base, name)
    if name in inner:
      default = getattr(base, name) if base is not None else field.default_factory()
      kwargs[name] = from_record(top[name][1], inner[name], error, default)
  return cls(**kwargs)


def with_values(config, values: Mapping[str, Any], error: type = ValueError):
  """A copy of `config` with `values` keyed by field or flag name, nested ones flat
  ({"warmup_steps": 5} sets `config.quantizer.warmup_steps`); unknown is an `error`."""
  paths = {}
  for flag, (path, field) in leaves(type(config)).items():
    paths.setdefault(field.name, path)
    paths[flag] = path
  unknown = sorted(set(values) - set(paths))
  if unknown:
    raise error(f"{type(config).__name__}: unknown option(s) {unknown}; known: "
                f"{sorted(paths)}")
  grouped: Dict[Tuple[str, ...], Dict[str, Any]] = {}
  for key, value in values.items():
    grouped.setdefault(paths[key][:-1], {})[paths[key][-1]] = value

  def replace(owner, prefix):
    changes = dict(grouped.get(prefix, {}))
    for field, _ in _options(type(owner)):
      if is_nested(field) and any(p[:len(prefix) + 1] == prefix + (field.name,)
                                  for p in grouped):
        changes[field.name] = replace(getattr(owner, field.name), prefix + (field.name,))
    return dataclasses.replace(owner, **changes) if changes else owner
  return replace(config, ())
