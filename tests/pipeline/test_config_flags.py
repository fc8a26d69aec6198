"""Flags generated from config dataclasses: types, choices, renames, sharing, and the
`hmdn` flags agreeing with the configs' own defaults."""
import dataclasses
import re
from typing import Any, Dict, Optional, Tuple

import pytest
from absl import flags

from hmdn.pipeline import config_flags


@dataclasses.dataclass
class _Config:
  name: str = dataclasses.field(default="a", metadata={"help": "Which.",
                                                       "choices": ("a", "b")})
  size: int = 3
  rate: float = 0.5
  on: bool = True
  cutoff: Optional[float] = None
  kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  units: Tuple[int, ...] = (64,)
  seed: int = 0


@dataclasses.dataclass
class _Other:
  seed: int = 0
  size: int = 9


def _parse(*argv, rename=None):
  values = flags.FlagValues()
  config_flags.define_flags(_Config, rename, flag_values=values)
  values(["prog", *argv])
  return values


def test_defaults_come_from_the_dataclass():
  values = _parse()
  assert config_flags.from_flags(_Config, flag_values=values) == _Config()


def test_every_type_parses():
  values = _parse("--kind=b", "--size=7", "--rate=1.5", "--noon", "--cutoff=2.5",
                  '--kwargs={"k": 1}', "--units=8,4", "--seed=3",
                  rename={"name": "kind"})
  config = config_flags.from_flags(_Config, {"name": "kind"}, flag_values=values)
  assert config == _Config(name="b", size=7, rate=1.5, on=False, cutoff=2.5,
                           kwargs={"k": 1}, units=(8, 4), seed=3)
  assert config_flags.from_flags(_Config, {"name": "kind"}, flag_values=values,
                                 size=11).size == 11  # explicit values win


def test_bad_values_name_the_flag():
  with pytest.raises(flags.IllegalFlagValueError, match="name"):
    _parse("--name=c")
  values = _parse("--kwargs=[1]")
  with pytest.raises(ValueError, match="--kwargs: expected a JSON object"):
    config_flags.from_flags(_Config, flag_values=values)
  values = _parse("--units=8,x")
  with pytest.raises(ValueError, match="--units"):
    config_flags.from_flags(_Config, flag_values=values)


def test_a_flag_name_is_shared_only_when_asked():
  values = flags.FlagValues()
  config_flags.define_flags(_Config, flag_values=values)
  with pytest.raises(ValueError, match="--size"):
    config_flags.define_flags(_Other, shared=("seed",), flag_values=values)
  config_flags.define_flags(_Other, {"size": "other_size"}, shared=("seed",),
                            flag_values=values)
  values(["prog", "--seed=4", "--other_size=2"])
  assert config_flags.from_flags(_Config, flag_values=values).seed == 4
  assert config_flags.from_flags(_Other, {"size": "other_size"},
                                 flag_values=values) == _Other(seed=4, size=2)


def test_hmdn_flags_default_to_the_configs():
  """Users' flag names keep working, and each default is the config's."""
  from hmdn.beam_jobs.config import PreprocessConfig
  from hmdn.models.registry import ModelConfig
  from hmdn.pipeline import cli, strategies
  from hmdn.pipeline.train import LR_SCHEDULES, TrainConfig
  for name in ("model", "seed", "data_dir", "spec", "raw", "strategy", "lr_schedule",
               "extraction", "backbone_kwargs", "direct_num_workers", "rows",
               "output_dir", "saved_model", "verify_export"):
    assert name in cli.FLAGS, name
  cli.FLAGS.unparse_flags()
  cli.FLAGS(["hmdn"], known_only=True)
  try:
    assert cli.model_config() == ModelConfig()
    assert cli.train_config("d", "m") == TrainConfig(data_dir="d", model_dir="m")
    assert cli.preprocess_config("r", "s", "d") == PreprocessConfig(
        raw="r", spec_path="s", output_dir="d")
  finally:
    cli.FLAGS.unparse_flags()
  # Choices are the ones of the module that chooses.
  assert cli.FLAGS["strategy"].parser.enum_values == list(strategies.STRATEGIES)
  assert cli.FLAGS["lr_schedule"].parser.enum_values == list(LR_SCHEDULES)


def _cli_model(*argv):
  """cli's model config and its given flags, from `argv` parsed into cli.FLAGS."""
  from hmdn.pipeline import cli
  cli.FLAGS.unparse_flags()
  cli.FLAGS(["hmdn", *argv], known_only=True)
  return cli.model_config(), cli


@pytest.mark.parametrize("argv,message", [
    (["--model=dnn", "--num_levels=7"],
     "--num_levels does not apply: --model=dnn is not an HMDN model"),
    (["--model=dnn", "--condition=all"],
     "--condition does not apply: --model=dnn reads no condition"),
    (["--model=moe", "--cross_buckets=10"],
     "--cross_buckets does not apply: --condition=coarsest is not cross"),
    (["--model=hmdn_moe", "--condition=all", "--hmdn_condition=hierarchical_only"],
     "--condition does not apply: --model=hmdn_moe with "
     "--hmdn_condition=hierarchical_only"),
    (["--model=hmdn_moe", "--extraction=explicit", "--implicit_fields=user_id"],
     "--implicit_fields does not apply: --extraction=explicit has no implicit view"),
])
def test_a_model_flag_that_does_not_apply_is_refused(argv, message):
  model, cli = _cli_model(*argv)
  try:
    with pytest.raises(ValueError, match=re.escape(message)):
      cli.refuse_inapplicable(model)
  finally:
    cli.FLAGS.unparse_flags()


@pytest.mark.parametrize("argv", [
    [], ["--model=dnn", "--seed=3", "--output_dim=8"],
    ["--model=hmdn_moe", "--num_levels=2", "--codebook_warmup_steps=5", "--condition=all"],
    ["--model=moe", "--condition=cross", "--cross_dim=4"],
    # Defaults are not given: hierarchical_only with the default condition passes.
    ["--model=hmdn_moe", "--hmdn_condition=hierarchical_only"],
])
def test_model_flags_that_apply_pass(argv):
  model, cli = _cli_model(*argv)
  try:
    cli.refuse_inapplicable(model)
    if "--codebook_warmup_steps=5" in argv:  # the flag reaches the nested option
      assert model.hmdrr.quantizer.warmup_steps == 5
      assert model.hmdrr.quantizer.num_levels == 2
  finally:
    cli.FLAGS.unparse_flags()


def test_nested_configs_are_flat_flags_with_their_parents_defaults():
  """ModelConfig.hmdrr's options are plain flags; --codebook_warmup_steps defaults to
  the model's 100, not the layer-alone default 0."""
  from hmdn.features.options import nested, option

  @dataclasses.dataclass
  class Inner:
    depth: int = option(1, "Depth.", minimum=1, flag="inner_depth")

  @dataclasses.dataclass
  class Outer:
    inner: Inner = nested(Inner, "Inner.", factory=lambda: Inner(depth=5))
    width: int = option(2, "Width.")

  values = flags.FlagValues()
  config_flags.define_flags(Outer, flag_values=values)
  values(["prog"])
  assert values["inner_depth"].value == 5
  assert config_flags.from_flags(Outer, flag_values=values) == Outer()
  values(["prog", "--inner_depth=3"])
  assert config_flags.from_flags(Outer, flag_values=values).inner.depth == 3
  from hmdn.pipeline import cli
  assert cli.FLAGS["codebook_warmup_steps"].default == 100
