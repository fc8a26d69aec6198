"""The built-in log generators by name, for `hmdn generate|run --generator=NAME`.

Each generator is a module with a config dataclass (at least `rows` and `seed`) and
`generate(output_dir, config) -> summary`, writing raw/part-*.csv, spec.yaml and
generator.json (with `rows`, `ctr` and `oracle_auc`). Beam-free: numpy only.

`FLAG_FIELDS` are the opt-in options `hmdn generate|run` also take as flags (each
declared once, by `option()`, on the configs that have it); the other config fields keep
their defaults there.
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple, Type

from hmdn.beam_jobs import longtail_logs, synthetic_logs

PLANTED = "planted"
LONGTAIL = "longtail"
DEFAULT = PLANTED
FLAG_FIELDS = ("conversion_rate", "conversion_correlation", "browsing",
               "interest_strength", "interest_concentration")


@dataclasses.dataclass(frozen=True)
class Generator:
  """A generator's config class, its generate function and the spec it writes."""
  name: str
  config_class: Type
  generate: Callable[[str, Any], Dict]
  spec_path: str
  help: str

  def config(self, **overrides) -> Any:
    """The default config with `overrides`; an unknown field is an error naming it."""
    known = {f.name for f in dataclasses.fields(self.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
      raise ValueError(f"generator {self.name!r}: unknown config field(s) {unknown}; "
                       f"it has {sorted(known)}")
    return self.config_class(**overrides)

  @property
  def fields(self) -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(self.config_class))

  def config_from_flags(self, rows: int, seed: int, given: Mapping[str, Any]) -> Any:
    """The config of `--rows`, `--seed` and the `FLAG_FIELDS` flags given; a flag this
    generator does not take is refused naming it and the ones it takes."""
    unknown = sorted(set(given) - set(self.fields))
    if unknown:
      takes = [f"--{n}" for n in FLAG_FIELDS if n in self.fields]
      raise ValueError(f"--{unknown[0]}: not an option of --generator={self.name} (it "
                       f"takes {', '.join(takes) or 'none of them'})")
    return self.config(rows=rows, seed=seed, **given)


GENERATORS: Dict[str, Generator] = {
    PLANTED: Generator(
        PLANTED, synthetic_logs.GeneratorConfig, synthetic_logs.generate,
        synthetic_logs.SPEC_PATH,
        "scenario -> user group -> hidden subgroup, 24 large leaves (the demo default)"),
    LONGTAIL: Generator(
        LONGTAIL, longtail_logs.LongTailConfig, longtail_logs.generate,
        longtail_logs.SPEC_PATH,
        "4 observed levels, ~1k Zipf-sized leaves, a latent user level (HMDN's regime)"),
}


def flag_configs() -> Dict[Type, Tuple[str, ...]]:
  """{config class: its fields that are not flags}, for defining the FLAG_FIELDS
  flags from the `option()` declarations."""
  return {g.config_class: tuple(n for n in g.fields if n not in FLAG_FIELDS)
          for g in GENERATORS.values()}


def get(name: str) -> Generator:
  try:
    return GENERATORS[name]
  except KeyError:
    raise ValueError(f"--generator: unknown generator {name!r}; expected one of "
                     f"{sorted(GENERATORS)}") from None
