"""A model label of `hmdn compare`: `NAME` or `NAME:key=value:...` (ModelConfig options
by flag name, list values joined by `|`), and what the report derives from it."""
import json
import re
from typing import Any, Dict, Tuple

from hmdn.features import options
from hmdn.models.registry import HMDN_PREFIX, ModelConfig


def parse_variant(text: str) -> Tuple[str, Dict[str, Any]]:
  """`hmdn_moe:num_levels=6:condition=all` -> ("hmdn_moe", {"num_levels": 6, ...}),
  keyed by flag name, values typed like the ModelConfig option they set; an option
  the variant's model does not use is refused."""
  name, *parts = [p.strip() for p in text.split(":")]
  fields = {flag: field for flag, (_, field) in options.leaves(ModelConfig).items()
            if flag not in ("model", "seed")}
  defaults = options.values_by_flag(ModelConfig())
  overrides = {}
  for part in parts:
    key, sep, value = part.partition("=")
    if not sep or key not in fields:
      raise ValueError(f"--models: {part!r} in {text!r} is not key=value of a model "
                       f"option; options: {sorted(fields)}")
    current = defaults[key]
    try:
      if isinstance(current, bool):
        if value not in ("true", "false", "True", "False", "1", "0"):
          raise ValueError
        typed = value in ("true", "True", "1")
      elif isinstance(current, dict):
        typed = json.loads(value)
      elif isinstance(current, (list, tuple)):  # a|b|c (commas separate the models)
        items = [v for v in value.split("|") if v]
        kind = type(current[0]) if current else str
        typed = tuple(kind(v) for v in items)
      else:
        typed = type(current)(value)
    except ValueError:
      if isinstance(current, (list, tuple)):
        what = (f"list of {type(current[0]).__name__} values joined by '|'"
                if current else "list of values joined by '|'")
        example = "|".join(map(str, current)) or "a|b"
        raise ValueError(f"--models: {key}={value!r} in {text!r} is not a {what} "
                         f"(the default: {key}={example})") from None
      raise ValueError(f"--models: {key}={value!r} in {text!r} is not a "
                       f"{type(current).__name__}") from None
    overrides[key] = typed
  config = options.with_values(ModelConfig(name=name), overrides).validate()
  try:
    options.refuse_inapplicable(config, overrides)
  except ValueError as e:
    raise ValueError(f"--models: {text!r}: {e}") from None
  return name, overrides


def backbone_of(label: str) -> str:
  name = label.split(":")[0]
  return name[len(HMDN_PREFIX):] if name.startswith(HMDN_PREFIX) else name


def is_hmdn(label: str) -> bool:
  return label.split(":")[0].startswith(HMDN_PREFIX)


def option_text(value) -> str:
  return "|".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def file_name(label: str) -> str:
  """A model label as a file name: `:` -> `__`, a list's `|` -> `+`."""
  return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label.replace(":", "__").replace("|", "+"))
