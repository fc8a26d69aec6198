"""One way to declare an option (a config dataclass field): its default, help and
choices, from which `pipeline/config_flags.py` makes the `hmdn` flag, so no option is
declared twice. PreprocessConfig, ModelConfig, TrainConfig and LongTailConfig use it."""
import dataclasses
from typing import Any, Callable, Iterable, Optional


def option(default: Any = dataclasses.MISSING, help: str = "",  # noqa: A002
           choices: Optional[Iterable] = None,
           factory: Optional[Callable[[], Any]] = None):
  """A dataclass field with `metadata={"help": ..., "choices": (...)}`; `factory`
  instead of `default` for mutable defaults; no default = a required field."""
  metadata = {"help": help}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  if factory is not None:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)
