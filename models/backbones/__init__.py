"""Backbones: shared-bottom, Mixture-of-Experts and Dynamic-Weight families.

Every layer here is Keras-serializable under the package "hmdn"
(`tf.keras.layers.deserialize` rebuilds it without `custom_objects`).
"""
from hmdn.models.backbones.apg import APG  # noqa: E402
from hmdn.models.backbones.base import Backbone  # noqa: E402
from hmdn.models.backbones.dnn import DNN  # noqa: E402
from hmdn.models.backbones.epnet import EPNet  # noqa: E402
from hmdn.models.backbones.esmm import ESMM  # noqa: E402
from hmdn.models.backbones.hinet import HiNet  # noqa: E402
from hmdn.models.backbones.mmoe import MMoE  # noqa: E402
from hmdn.models.backbones.moe import MoE  # noqa: E402
from hmdn.models.backbones.ple import PLE  # noqa: E402
from hmdn.models.backbones.star import STAR  # noqa: E402

BACKBONES = {
    "dnn": DNN,
    "moe": MoE,
    "mmoe": MMoE,
    "ple": PLE,
    "hinet": HiNet,
    "star": STAR,
    "apg": APG,
    "epnet": EPNet,
    "esmm": ESMM,
}


def get_backbone(name: str):
  """Returns the backbone class registered under `name`."""
  if name not in BACKBONES:
    raise ValueError(
        f"Unknown backbone {name!r}; expected one of {sorted(BACKBONES)}.")
  return BACKBONES[name]


def uses_condition(name: str) -> bool:
  """Whether backbone `name` reads inputs["condition"] (DNN does not)."""
  return get_backbone(name).reads_condition


def uses_domain(name: str) -> bool:
  """Whether backbone `name` keeps per-domain parameters (reads "domain")."""
  return get_backbone(name).reads_domain
