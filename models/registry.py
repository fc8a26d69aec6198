"""One registry of every model, findable by name (`--model=hmdn_apg`).

A model is a backbone of `models/backbones` used alone (the single-distribution
baseline, conditioned on the distribution-field embeddings) or as `hmdn_<backbone>`,
the same backbone at the same size conditioned on the hierarchical representation s_D.
"""
import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

from models.backbones import BACKBONES
from models.hierarchical import views_of

HMDN_PREFIX = "hmdn_"
CONDITIONS = ("concat", "hierarchical_only")


@dataclasses.dataclass
class ModelConfig:
  """Every option of the model; HMDN options are ignored by baselines."""
  name: str = "dnn"
  output_dim: int = 32  # width of the backbone's output, before the logit head
  backbone_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # HMDRR (../shared/HMDN.md, "The model"):
  extraction: str = "dual"  # explicit | implicit | dual
  distribution_dim: int = 16
  view_units: Tuple[int, ...] = (64,)
  num_levels: int = 4
  codebook_size: int = 16
  shared_codebook: bool = False
  codebook_update: str = "ema"  # ema | loss
  decay: float = 0.99
  beta: float = 0.25
  commitment_weight: float = 1.0  # lambda
  # How s_D conditions the backbone: concatenated with the distribution-field
  # embeddings (default) or alone.
  hmdn_condition: str = "concat"
  seed: int = 0

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
    if self.name not in model_names():
      raise ValueError(f"--model: unknown model {self.name!r}; known: {model_names()}")
    if self.output_dim < 1:
      raise ValueError(f"output_dim must be >= 1, got {self.output_dim}")
    if self.hmdn_condition not in CONDITIONS:
      raise ValueError(f"hmdn_condition must be one of {CONDITIONS}, got "
                       f"{self.hmdn_condition!r}")
    return self


def model_names() -> List[str]:
  """Every registered model: each backbone, and the HMDN variant of each backbone
  that reads a condition (the shared-bottom DNN reads none, so it has no variant)."""
  names = sorted(BACKBONES)
  names += sorted(HMDN_PREFIX + n for n, cls in BACKBONES.items()
                  if cls.reads_condition)
  return names
