"""A spec from YAML (a file, or a name shipped in `features/specs/`) or from a parsed
mapping; every error is a SpecError naming the source, so a typo in a spec file is
reported as such and not as a TypeError deep in a job."""
import dataclasses
import os
from typing import Any, Mapping, Sequence

import yaml

from hmdn.features.spec.kinds import SpecError
from hmdn.features.spec.schema import Derived, Feature, FeatureSpec
from hmdn.features.spec.validation import check_value

# The specs shipped with the package (setup.py's package_data `features: specs/*.yaml`).
SPECS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "specs")

_FIELD_KEYS = {f.name for f in dataclasses.fields(Feature)}
_DERIVED_KEYS = {f.name for f in dataclasses.fields(Derived)}


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
  try:
    data = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise SpecError(f"{path}: not valid YAML ({e})")
  try:
    return spec_from_dict(data, source=path)
  except TypeError as e:  # e.g. a wrong value type the dataclass could not take
    raise SpecError(f"{path}: {e}")


def spec_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> FeatureSpec:
  """Builds a spec from parsed YAML/JSON, with errors naming the source."""
  if not isinstance(data, Mapping) or "features" not in data:
    raise SpecError(f"{source}: expected a mapping with a 'features' list")
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
    kwargs = dict(item)
    if "boundaries" in kwargs:
      try:
        kwargs["boundaries"] = tuple(float(b) for b in kwargs["boundaries"])
      except (TypeError, ValueError):
        check_value(where, "boundaries", item["boundaries"], False, "numbers")
    for int_key in ("embedding_dim", "vocab_min_count", "hash_buckets"):
      if int_key in kwargs:
        check_value(where, int_key, kwargs[int_key], isinstance(kwargs[int_key], int),
                    "an integer")
    if kwargs.get("derived") is not None:
      kwargs["derived"] = _derived_from_dict(kwargs["derived"], where)
    features.append(Feature(**kwargs))
  return FeatureSpec(name=str(data.get("name", "unnamed")), features=tuple(features),
                     source=source)


def _refuse_unknown_keys(where: str, given: Mapping, allowed) -> None:
  """A key the schema does not know is an error listing the keys it does."""
  unknown = set(given) - set(allowed)
  if unknown:
    raise SpecError(f"{where} unknown key(s) {sorted(unknown)}; allowed: "
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
                isinstance(bounds, Sequence) and not isinstance(bounds, str) and
                not any(isinstance(b, bool) for b in bounds), "a list of numbers")
  try:
    if "boundaries" in kwargs:
      kwargs["boundaries"] = tuple(float(b) for b in kwargs["boundaries"])
    if "sources" in kwargs:
      if isinstance(kwargs["sources"], str):
        raise TypeError
      kwargs["sources"] = tuple(str(s) for s in kwargs["sources"])
  except (TypeError, ValueError):
    raise SpecError(f"{where}: derived: boundaries must be numbers and sources a list "
                    f"of field names, got {raw!r}")
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
