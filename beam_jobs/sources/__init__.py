"""Sources: raw logs of a known layout -> the parsed records every source produces.

One module per source, each a `Source` (resolve `--raw`, read) over the shared
`base.LineParserFn`; the job picks one by name, once, with `get(config.source)`:

  generic      CSV (with a header) or JSONL described by the spec   generic.py
  ali_ccp_raw  sample_skeleton_<part>.csv joined with common_features_<part>.csv
                                                                    ali_ccp_raw.py
  movielens    the ml-100k layout: u.data, u.user, u.item (latin-1) movielens.py

The names (and the other config choices) are in the Beam-free `beam_jobs.config`.
"""
from typing import Dict

from hmdn.beam_jobs import config as C
from hmdn.beam_jobs.sources.ali_ccp_raw import AliCcpRawSource
from hmdn.beam_jobs.sources.base import Inputs, LineParserFn, Source
from hmdn.beam_jobs.sources.generic import GenericSource
from hmdn.beam_jobs.sources.movielens import MovieLensSource

REGISTRY: Dict[str, Source] = {s.name: s for s in (
    GenericSource(), AliCcpRawSource(), MovieLensSource())}
assert tuple(REGISTRY) == C.SOURCES, (tuple(REGISTRY), C.SOURCES)


def get(name: str) -> Source:
  """The source called `name` (`--source`)."""
  try:
    return REGISTRY[name]
  except KeyError:
    raise C.PreprocessError(f"--source: expected one of {C.SOURCES}, got {name!r}")
