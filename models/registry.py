"""One registry of every model, findable by name (`--model=hmdn_apg`).

A model is a backbone of `models/backbones` used alone (the single-distribution
baseline, conditioned on `condition`: the coarsest distribution field by default, as
in the paper) or as `hmdn_<backbone>`, the same backbone at the same size conditioned
on the hierarchical representation s_D (with or without the backbone's own condition).

Every `ModelConfig` field carries its flag help (and its choices) in its metadata, so
the CLI generates its flags from the fields (`--model` sets `name`).
"""
import dataclasses
import inspect
from typing import Any, Dict, List, Tuple

from hmdn.features.options import option
from hmdn.models.backbones import BACKBONES
from hmdn.models.hierarchical import EXTRACTIONS, views_of
from hmdn.models.quantizer import CODEBOOK_UPDATES

HMDN_PREFIX = "hmdn_"
HMDN_CONDITIONS = ("concat", "hierarchical_only")
# The backbone's own condition: the coarsest distribution field's embedding (the
# paper's single-distribution baseline), every distribution field's embedding
# concatenated, or one embedding of their cross.
BACKBONE_CONDITIONS = ("coarsest", "all", "cross")
# Constructor arguments CTRModel sets itself; not accepted in backbone_kwargs.
_SET_BY_MODEL = ("self", "num_domains", "output_dim", "name", "kwargs")


def model_names() -> List[str]:
  """Every registered model: each backbone, and the HMDN variant of each backbone
  that reads a condition (the shared-bottom DNN reads none, so it has no variant)."""
  names = sorted(BACKBONES)
  names += sorted(HMDN_PREFIX + n for n, cls in BACKBONES.items()
                  if cls.reads_condition)
  return names


@dataclasses.dataclass
class ModelConfig:
  """Every option of the model; HMDN options are ignored by baselines."""
  name: str = option("dnn", "Model: a backbone, or hmdn_<backbone>.",
                   choices=model_names())
  output_dim: int = option(32, "Width of the backbone's output, before the logit head.")
  backbone_kwargs: Dict[str, Any] = option(
      None, "JSON of backbone constructor arguments (e.g. {\"num_experts\": 8}).",
      factory=dict)
  condition: str = option(
      "coarsest", "Backbone condition: the coarsest distribution field (the paper's "
      "baseline), all of them concatenated, or an embedding of their cross.",
      choices=BACKBONE_CONDITIONS)
  cross_buckets: int = option(1000, "Hash buckets of the cross-of-distribution-fields "
                            "embedding (condition=cross).")
  cross_dim: int = option(16, "Width of the cross embedding (condition=cross).")
  # HMDRR (../shared/HMDN.md, "The model"):
  extraction: str = option("dual", "HMDN views quantized: explicit, implicit or both.",
                         choices=EXTRACTIONS)
  implicit_fields: Tuple[str, ...] = option(
      (), "Fields the implicit view reads (user/context features); empty = the "
      "spec's implicit_view fields, or every embedded field if none is marked. Read "
      "through a stop-gradient.")
  distribution_dim: int = option(16, "d: width of each view's vector and codes.")
  view_units: Tuple[int, ...] = option((64,), "Hidden layer sizes of each view's MLP.")
  num_levels: int = option(4, "D: residual quantization depth.")
  codebook_size: int = option(8, "K: codes per level (small, so level 1 cannot "
                            "memorise the leaves).")
  shared_codebook: bool = option(False, "One codebook shared by all levels.")
  codebook_update: str = option("ema", "How codebooks learn: EMA or the VQ-VAE "
                              "codebook loss.", choices=CODEBOOK_UPDATES)
  decay: float = option(0.99, "EMA decay of the codebooks, in (0, 1).")
  beta: float = option(0.25, "Commitment cost beta.")
  commitment_weight: float = option(1.0, "lambda: weight of the quantization losses "
                                  "(commitment averaged over levels).")
  aux_weight: float = option(0.5, "Weight of the auxiliary CTR loss on the implicit "
                           "view's s_D (0 = off).")
  codebook_warmup_steps: int = option(100, "Training steps before quantizing (views pass "
                           "through; seeding buffer fills).")
  kmeans_iterations: int = option(5, "Lloyd iterations after k-means++ seeding.")
  restart_after_steps: int = option(100, "Restart a code unused for this many steps "
                                  "(0 = never).")
  buffer_size: int = option(2048, "Real vectors kept for seeding the codebooks.")
  hmdn_condition: str = option(
      "concat", "How s_D conditions the backbone: concatenated with the backbone's "
      "condition, or alone.", choices=HMDN_CONDITIONS)
  seed: int = option(0, "Seed of the quantizer's random ops.")

  def __post_init__(self):
    # JSON and flags give lists; the fields are tuples.
    self.view_units = tuple(self.view_units)
    self.implicit_fields = tuple(self.implicit_fields)

  @property
  def is_hmdn(self) -> bool:
    return self.name.startswith(HMDN_PREFIX)

  @property
  def code_views(self) -> List[str]:
    """HMDRR views whose codes the model outputs (none for baselines)."""
    return views_of(self.extraction) if self.is_hmdn else []

  @property
  def backbone(self) -> str:
    return self.name[len(HMDN_PREFIX):] if self.is_hmdn else self.name

  def validate(self) -> "ModelConfig":
    """Raises ValueError naming the option and the value; returns self."""
    if self.name not in model_names():
      raise ValueError(f"--model: unknown model {self.name!r}; known: {model_names()}")
    for f in dataclasses.fields(self):
      choices = f.metadata.get("choices")
      if choices and f.name != "name" and getattr(self, f.name) not in choices:
        raise ValueError(f"{f.name} must be one of {choices}, got "
                         f"{getattr(self, f.name)!r}")
    at_least = dict(output_dim=1, cross_buckets=1, cross_dim=1, distribution_dim=1,
                    num_levels=1, codebook_size=2, beta=0, commitment_weight=0,
                    aux_weight=0, codebook_warmup_steps=0, kmeans_iterations=0,
                    restart_after_steps=0, buffer_size=self.codebook_size)
    for name, low in at_least.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{name} must be a number >= {low}, got {value!r}")
    if not 0.0 < self.decay < 1.0:
      raise ValueError(f"decay must be in (0, 1), got {self.decay!r}")
    if any(
        isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in self.view_units):
      raise ValueError(f"view_units must be positive integers, got {self.view_units!r}")
    accepted = sorted(
        p for p in inspect.signature(BACKBONES[self.backbone].__init__).parameters
        if p not in _SET_BY_MODEL)
    unknown = sorted(set(self.backbone_kwargs) - set(accepted))
    if unknown:
      raise ValueError(f"backbone_kwargs: {unknown} not accepted by backbone "
                       f"{self.backbone!r}; accepted: {accepted}")
    return self
