"""One registry of every model, findable by name (`--model=hmdn_apg`).

A model is a backbone of `models/backbones` used alone (the single-distribution
baseline, conditioned on `condition`: the coarsest distribution field by default, as
in the paper) or as `hmdn_<backbone>`, the same backbone at the same size conditioned
on the hierarchical representation s_D (with or without the backbone's own condition).

Every `ModelConfig` field carries its flag help, choices, bounds and the models it
applies to in its metadata (`features.options.option`), so the CLI generates its flags
from the fields (`--model` sets `name`; HMDRR's nested options are flat flags).
"""
import dataclasses
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hmdn.features.options import nested, option, validate, with_values
from hmdn.models.attention import NORMALIZATIONS
from hmdn.models.backbones import BACKBONES
from hmdn.models.embedding import SEQUENCE_POOLINGS
from hmdn.models.hierarchical import IMPLICIT, HMDRRConfig, views_of
from hmdn.models.quantizer import QuantizerConfig
from hmdn.models.tasks import CVR_LOSSES

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


def _unless_hmdn(config) -> str:
  return "" if config.is_hmdn else (
      f"--model={config.name} is not an HMDN model (only hmdn_<backbone> has HMDRR)")


def _unless_implicit(config) -> str:
  return _unless_hmdn(config) or ("" if IMPLICIT in config.code_views else (
      f"--extraction={config.hmdrr.extraction} has no implicit view"))


def _unless_condition_read(config) -> str:
  """The backbone's own condition is read unless the backbone reads none or HMDN
  replaces it with s_D alone."""
  backbone = BACKBONES.get(config.backbone)
  if backbone is not None and not backbone.reads_condition:
    return f"--model={config.name} reads no condition"
  if config.is_hmdn and config.hmdn_condition == "hierarchical_only":
    return (f"--model={config.name} with --hmdn_condition=hierarchical_only conditions "
            "the backbone on s_D alone")
  return ""


def _unless_cross(config) -> str:
  return _unless_condition_read(config) or ("" if config.condition == "cross" else (
      f"--condition={config.condition} is not cross"))


def _unless_din(config) -> str:
  return "" if config.sequence_pooling == "din" else (
      f"--sequence_pooling={config.sequence_pooling} is not din")


def _default_hmdrr() -> HMDRRConfig:
  """A trained model warms its codebooks up for 100 steps (the layer alone: none)."""
  return HMDRRConfig(quantizer=QuantizerConfig(warmup_steps=100))


@dataclasses.dataclass
class ModelConfig:
  """Every option of the model. `applies` on a field says which models use it: a flag
  given for a model that does not use it is refused, and it is not recorded."""
  name: str = option("dnn", "Model: a backbone, or hmdn_<backbone>.",
                     choices=model_names(), flag="model")
  output_dim: int = option(32, "Width of the backbone's output, before the logit head.",
                           minimum=1)
  backbone_kwargs: Dict[str, Any] = option(
      None, "JSON of backbone constructor arguments (e.g. {\"num_experts\": 8}).",
      factory=dict)
  condition: str = option(
      "coarsest", "Backbone condition: the coarsest distribution field (the paper's "
      "baseline), all of them concatenated, or an embedding of their cross.",
      choices=BACKBONE_CONDITIONS, applies=_unless_condition_read)
  cross_buckets: int = option(1000, "Hash buckets of the cross-of-distribution-fields "
                              "embedding (condition=cross).", minimum=1,
                              applies=_unless_cross)
  cross_dim: int = option(16, "Width of the cross embedding (condition=cross).",
                          minimum=1, applies=_unless_cross)
  hmdrr: HMDRRConfig = nested(HMDRRConfig, "HMDRR (../shared/HMDN.md, \"The model\").",
                              applies=_unless_hmdn, factory=_default_hmdrr)
  implicit_fields: Tuple[str, ...] = option(
      (), "Fields the implicit view reads (user/context features); empty = the "
      "spec's implicit_view fields, or every embedded field if none is marked. Read "
      "through a stop-gradient.", applies=_unless_implicit)
  aux_weight: float = option(0.5, "Weight of the auxiliary CTR loss on the implicit "
                             "view's s_D (0 = off).", minimum=0.0,
                             applies=_unless_implicit)
  hmdn_condition: str = option(
      "concat", "How s_D conditions the backbone: concatenated with the backbone's "
      "condition, or alone.", choices=HMDN_CONDITIONS, applies=_unless_hmdn)
  task_tower_units: Tuple[int, ...] = option(
      (32,), "Hidden layer sizes of each task's tower before its logit, in a model of "
      "several tasks (the spec's label fields); one task keeps a single logit head.",
      minimum=1)
  cvr_loss: str = option(
      "entire", "How a task observed after another (after: in the spec) is trained: "
      "BCE of p(ctcvr) = p(ctr) * p(cvr) over every impression (ESMM), BCE of p(cvr) "
      "over the rows where the prerequisite is 1 (masked), or both.", choices=CVR_LOSSES)
  task_dim: int = option(8, "Width of the task embedding HMDN's explicit view reads in "
                         "a model of several tasks (the task as a level of the "
                         "hierarchy).", minimum=1, applies=_unless_hmdn)
  sequence_pooling: str = option(
      "din", "How each sequence field (a behaviour history) becomes one vector, an "
      "input of the backbone like any field: DIN target attention with the example's "
      "own vocab_from value (the candidate) as the query, the mean of the history, "
      "or none (the sequence fields are ignored: the no-history baseline on the same "
      "data). Specs without sequences ignore it.", choices=SEQUENCE_POOLINGS)
  din_normalization: str = option(
      "softmax", "DIN's attention weights: a softmax over the history (DIN's code) or "
      "none (the paper's raw weights, keeping the intensity of interest).",
      choices=NORMALIZATIONS, applies=_unless_din)
  din_units: Tuple[int, ...] = option(
      (36,), "Hidden layer sizes of DIN's activation unit: one of 36 as the paper draws "
      "it (Fig. 2); its released code has 80,40 (measured 1.4x the training step of "
      "MovieLens' two 50-long histories).", minimum=1, applies=_unless_din)
  seed: int = option(0, "Seed of the quantizer's random ops.", minimum=0)

  def __post_init__(self):
    # JSON and flags give lists; the fields are tuples.
    self.implicit_fields = tuple(self.implicit_fields)
    self.task_tower_units = tuple(self.task_tower_units)
    self.din_units = tuple(self.din_units)

  @classmethod
  def of(cls, **values) -> "ModelConfig":
    """A config with options given by field or flag name, nested ones flat:
    `ModelConfig.of(name="hmdn_moe", num_levels=2, codebook_warmup_steps=5)`."""
    return with_values(cls(), values)

  @property
  def is_hmdn(self) -> bool:
    return self.name.startswith(HMDN_PREFIX)

  @property
  def code_views(self) -> List[str]:
    """HMDRR views whose codes the model outputs (none for baselines)."""
    return views_of(self.hmdrr.extraction) if self.quantizes else []

  @property
  def codebook_size(self) -> Optional[int]:
    """K of the codes the model outputs (None for baselines)."""
    return self.hmdrr.quantizer.codebook_size if self.quantizes else None

  @property
  def quantizes(self) -> bool:
    """An HMDN model whose s_D is quantized (it has codes and a quantizer)."""
    return self.is_hmdn and self.hmdrr.quantize

  @property
  def backbone(self) -> str:
    return self.name[len(HMDN_PREFIX):] if self.is_hmdn else self.name

  def check_tasks(self, tasks: List[Any]) -> "ModelConfig":
    """What the data's labels decide (`models.tasks.tasks_of(spec)`): the task options
    apply with several tasks, `cvr_loss` and ESMM with a task observed after another.
    An option set away from its default that the data cannot use is refused in one
    line, naming the flag and the tasks; returns self."""
    names = ", ".join(t.name for t in tasks)
    later = [t.name for t in tasks if t.after is not None]
    what = ("one task" if len(tasks) == 1 else "no task observed after another "
            "(after: in the spec)")
    unused = ("task_tower_units", "task_dim") if len(tasks) == 1 else ()
    unused += ("cvr_loss",) if not later else ()
    self._refuse_set(unused, f"the spec has {what} ({names})")
    if self.backbone == "esmm" and not later:
      raise ValueError(f"--model={self.name}: ESMM models a task observed after another "
                       f"(after: in the spec, as a purchase after a click); the spec's "
                       f"tasks ({names}) have none: use --model=dnn")
    return self

  def check_sequences(self, spec) -> "ModelConfig":
    """The sequence options apply to a spec with sequence fields: one set away from
    its default on a spec without any (recorded, and ignored) is refused in one line;
    returns self."""
    if not spec.sequence_fields:
      self._refuse_set(("sequence_pooling", "din_normalization", "din_units"),
                       f"spec {spec.name!r} has no sequence field")
    return self

  def _refuse_set(self, names: Sequence[str], why: str) -> None:
    """Refuses the first option of `names` set away from its default: the data
    cannot use it (`why`), so it would be recorded and ignored."""
    defaults = ModelConfig()
    for name in names:
      value = getattr(self, name)
      if value != getattr(defaults, name):
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        raise ValueError(f"--{name}={shown} does not apply: {why}")

  def validate(self) -> "ModelConfig":
    """The declared rules (`features.options.validate`), then what spans fields;
    raises ValueError naming the flag and the value; returns self."""
    validate(self)
    accepted = sorted(
        p for p in inspect.signature(BACKBONES[self.backbone].__init__).parameters
        if p not in _SET_BY_MODEL)
    unknown = sorted(set(self.backbone_kwargs) - set(accepted))
    if unknown:
      raise ValueError(f"--backbone_kwargs: {unknown} not accepted by backbone "
                       f"{self.backbone!r}; accepted: {accepted}")
    return self
