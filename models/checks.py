"""The checks of a layer's constructor arguments, one rule a kind of argument, shared by
the MLP blocks (`models/mlp.py`) and the backbones (`models/backbones/base.py`), which
import the blocks: a module below both, so neither copies them. Each returns the value
as a plain int / float / bool / list, or raises ValueError naming the argument."""
import math
import numbers
from typing import Sequence


def _is_int(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool) and
          math.isfinite(value) and int(value) == value)


def check_positive(name: str, value: int) -> int:
  """Returns `value` as an int, or raises naming the option when it is < 1."""
  if not _is_int(value) or int(value) < 1:
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
  return int(value)


def check_non_negative(name: str, value: int) -> int:
  """Returns `value` as an int, or raises naming the option when it is < 0."""
  if not _is_int(value) or int(value) < 0:
    raise ValueError(
        f"`{name}` must be a non-negative integer (0 disables), got {value!r}.")
  return int(value)


def check_units(name: str, units: Sequence[int], allow_empty: bool = True):
  """Returns layer sizes as a list of ints; raises naming the option."""
  if isinstance(units, (str, bytes, dict)) or not hasattr(units, "__iter__"):
    raise ValueError(f"`{name}` must be a list of layer sizes, got {units!r}.")
  units = list(units)
  if not units and not allow_empty:
    raise ValueError(f"`{name}` needs at least one layer size, got {units!r}.")
  if not all(_is_int(u) and int(u) >= 1 for u in units):
    raise ValueError(
        f"`{name}` sizes must be positive integers, got {units!r}.")
  return [int(u) for u in units]


def check_dropout(value: float, name: str = "dropout") -> float:
  """Returns a dropout rate in [0, 1) as a float; raises naming the option."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not 0.0 <= float(value) < 1.0):
    raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")
  return float(value)


def check_bool(name: str, value: bool) -> bool:
  """Returns `value` if a bool; 0/1 or "false" is an error, not coerced."""
  if not isinstance(value, bool):
    raise ValueError(f"`{name}` must be true or false, got {value!r}.")
  return value
