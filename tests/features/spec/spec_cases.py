"""The small spec the spec tests vary, and how they build it (not a test module)."""
from hmdn.features import spec as spec_lib

BASE = [
    {"name": "click", "kind": "numeric", "role": "label"},
    {"name": "scenario", "kind": "categorical", "distribution_level": 0},
    {"name": "user_id", "kind": "categorical", "user_id": True},
    {"name": "price", "kind": "numeric"},
    {"name": "tags", "kind": "multi_categorical", "default": ""},
]


def _spec(features):
  return spec_lib.spec_from_dict({"name": "t", "features": features}, source="t.yaml")
