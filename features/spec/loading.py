"""A spec from YAML (a file, or a name shipped in `features/specs/`) or from a parsed
mapping; every error is a SpecError naming the source, so a typo in a spec file is
reported as such and not as a TypeError deep in a job."""
import dataclasses
import difflib
import os
from typing import Any, Mapping, Sequence

import yaml

from hmdn.features.spec.kinds import SEQUENCE, SpecError
from hmdn.features.spec.schema import Derived, Feature, FeatureSpec
from hmdn.features.spec.validation import check_value

# The specs shipped with the package (setup.py's package_data `features: specs/*.yaml`).
SPECS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "specs")

_FIELD_KEYS = {f.name for f in dataclasses.fields(Feature)}
_DERIVED_KEYS = {f.name for f in dataclasses.fields(Derived)}
_SPEC_KEYS = {"name", "features"}


class _UniqueKeyLoader(yaml.SafeLoader):
  """YAML's safe loader, but a mapping that gives a key twice is an error (PyYAML
  keeps the last, so a second `kind:` would silently win)."""

  def construct_mapping(self, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
      key = self.construct_object(key_node, deep=True)
      line = key_node.start_mark.line + 1
      try:
        first = seen.get(key)
      except TypeError:  # an unhashable key: the base loader reports it
        continue
      if first is not None:
        raise SpecError(f"duplicate key {key!r} (line {first} and line {line}): a key "
                        "is given once")
      seen[key] = line
    return super().construct_mapping(node, deep=deep)


def load_spec(path: str) -> FeatureSpec:
  """Loads and validates a YAML spec; a bare name means one shipped in features/specs."""
  if os.path.sep not in path and not path.endswith((".yaml", ".yml")) and \
      os.path.exists(os.path.join(SPECS_DIR, path + ".yaml")):
    path = os.path.join(SPECS_DIR, path + ".yaml")
  import tensorflow as tf  # here, not at the top: importing the spec loads no TF
  try:
    text = read_text(path)
  except (IOError, OSError, tf.errors.OpError, UnicodeDecodeError) as e:
    raise SpecError(f"{path}: cannot read the spec ({getattr(e, 'message', e)})")
  return spec_from_yaml(text, source=path)


def spec_from_yaml(text: str, source: str = "<memory>") -> FeatureSpec:
  """A spec from YAML text: a key given twice in a mapping is an error (not the last
  one silently kept), and so is every other wrong value, naming the source."""
  try:
    data = yaml.load(text, Loader=_UniqueKeyLoader)
  except SpecError as e:
    raise SpecError(f"{source}: {e}")
  except yaml.YAMLError as e:
    raise SpecError(f"{source}: not valid YAML ({e})")
  try:
    return spec_from_dict(data, source=source)
  except TypeError as e:  # e.g. a wrong value type the dataclass could not take
    raise SpecError(f"{source}: {e}")


def spec_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> FeatureSpec:
  """Builds a spec from parsed YAML/JSON, with errors naming the source."""
  if not isinstance(data, Mapping) or "features" not in data:
    raise SpecError(f"{source}: expected a mapping with a 'features' list")
  _refuse_unknown_keys(f"{source}:", data, _SPEC_KEYS)
  name = data.get("name", "unnamed")
  check_value(source, "name", name, isinstance(name, str), "a string")
  raw_features = data["features"]
  if not isinstance(raw_features, Sequence) or isinstance(raw_features, str):
    raise SpecError(f"{source}: 'features' must be a list")
  features = []
  for i, item in enumerate(raw_features):
    if not isinstance(item, Mapping) or "name" not in item or "kind" not in item:
      raise SpecError(f"{source}: features[{i}] needs at least 'name' and 'kind', got "
                      f"{item!r}")
    where = f"{source}: field {item['name']!r}"
    _refuse_unknown_keys(f"{where}:", item, _FIELD_KEYS)
    _refuse_sequence_keys(where, item)
    kwargs = dict(item)
    if "boundaries" in kwargs:  # the type is checked by validation, not converted here
      kwargs["boundaries"] = _numbers(kwargs["boundaries"])
    if kwargs.get("derived") is not None:
      kwargs["derived"] = _derived_from_dict(kwargs["derived"], where)
    features.append(Feature(**kwargs))
  return FeatureSpec(name=name, features=tuple(features), source=source)


# A sequence takes these from its vocab_from field; only a sequence takes the others.
_NOT_FOR_SEQUENCES = ("embedding_dim", "vocab_min_count", "hash_buckets", "boundaries",
                      "default")
_SEQUENCE_ONLY = ("vocab_from", "max_length")


def _refuse_sequence_keys(where: str, item: Mapping[str, Any]) -> None:
  """A key given for the wrong kind is refused even when its value is the default (the
  validation sees only values)."""
  if item.get("kind") == SEQUENCE:
    given = [k for k in _NOT_FOR_SEQUENCES if k in item]
    if given:
      raise SpecError(f"{where}: a sequence shares the vocabulary and embedding of its "
                      f"vocab_from field; it takes no {given[0]} of its own (got "
                      f"{item[given[0]]!r})")
  else:
    given = [k for k in _SEQUENCE_ONLY if k in item]
    if given:
      raise SpecError(f"{where}: {given[0]} is for sequence fields, kind is "
                      f"{item.get('kind')!r} ({given[0]}={item[given[0]]!r})")


def _numbers(value: Any) -> Any:
  """A YAML list of numbers as a tuple of floats; anything else as it is, for the
  validation to refuse by name (a string is not spread into characters)."""
  if isinstance(value, (list, tuple)) and all(
      isinstance(b, (int, float)) and not isinstance(b, bool) for b in value):
    return tuple(float(b) for b in value)
  return value


def _refuse_unknown_keys(where: str, given: Mapping, allowed) -> None:
  """A key the schema does not know is an error naming the closest key it does know,
  and listing them all."""
  unknown = sorted(set(given) - set(allowed), key=str)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
      if close:
        hints.append(f"{key!r}: did you mean {close[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise SpecError(f"{where} unknown key(s) {unknown}{hint}; allowed: "
                    f"{sorted(allowed)}")


def _derived_from_dict(raw: Any, where: str) -> Derived:
  if isinstance(raw, Derived):
    return raw
  if not isinstance(raw, Mapping) or "kind" not in raw:
    raise SpecError(f"{where}: derived must be a mapping with a 'kind', got {raw!r}")
  _refuse_unknown_keys(f"{where}: derived:", raw, _DERIVED_KEYS)
  kwargs = dict(raw)
  if "boundaries" in kwargs:
    bounds = kwargs["boundaries"]
    check_value(where, "derived: boundaries", bounds,
                isinstance(bounds, (list, tuple)) and
                not any(isinstance(b, bool) for b in bounds), "a list of numbers")
    kwargs["boundaries"] = _numbers(bounds)
    check_value(where, "derived: boundaries", bounds,
                isinstance(kwargs["boundaries"], tuple), "numbers")
  if isinstance(kwargs.get("sources"), (list, tuple)):  # else refused by the validation
    kwargs["sources"] = tuple(kwargs["sources"])
  return Derived(**kwargs)


def read_text(path: str) -> str:
  """Reads a whole UTF-8 file through `tf.io.gfile` (local, gs://, hdfs://); no Beam."""
  import tensorflow as tf  # here, not at the top: importing the spec loads no TF
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
  """Writes a whole file through `tf.io.gfile`, creating its directory."""
  import tensorflow as tf  # here, not at the top: importing the spec loads no TF
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(text.encode("utf-8"))
