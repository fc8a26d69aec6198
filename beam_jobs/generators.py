"""The built-in log generators by name, for `hmdn generate|run --generator=NAME`.

Each generator is a module with a config dataclass (at least `rows` and `seed`) and
`generate(output_dir, config) -> summary`, writing raw/part-*.csv, spec.yaml and
generator.json (with `rows`, `ctr` and `oracle_auc`). Beam-free: numpy only.
"""
import dataclasses
from typing import Any, Callable, Dict, Type

from hmdn.beam_jobs import longtail_logs, synthetic_logs

PLANTED = "planted"
LONGTAIL = "longtail"
DEFAULT = PLANTED


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


def get(name: str) -> Generator:
  try:
    return GENERATORS[name]
  except KeyError:
    raise ValueError(f"--generator: unknown generator {name!r}; expected one of "
                     f"{sorted(GENERATORS)}") from None
