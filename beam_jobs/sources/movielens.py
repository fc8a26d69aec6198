"""The `movielens` source: the ml-100k layout (u.data ratings joined with u.user and
u.item; its constants and line parsers: beam_jobs/movielens)."""
import os

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from hmdn.beam_jobs import config as C
from hmdn.beam_jobs import movielens as ml
from hmdn.beam_jobs.transforms.batches import DEAD_LETTER, RECORDS
from hmdn.beam_jobs.transforms.parse import parse_record
from hmdn.beam_jobs.sources import base


class _ParseRatingFn(base.LineParserFn):
  """u.data line -> (user_id, (file, line, cells)) or a dead letter."""

  def parse(self, path, line):
    user, cells = ml.parse_rating_line(line)
    return user, (path, line, cells)


class _ParseSideFn(base.LineParserFn):
  """u.user / u.item lines -> (id, (file, line, cells)) or a dead letter."""

  _PARSERS = {ml.USERS: ml.parse_user_line, ml.ITEMS: ml.parse_item_line}

  def __init__(self, kind):
    # u.user and u.item are latin-1 (accented titles), not UTF-8.
    super().__init__(f"movielens_{kind}s_read", f"movielens_{kind}s_rejected",
                     encoding=ml.ENCODING)
    self._kind = kind

  def parse(self, path, line):
    key, cells = self._PARSERS[self._kind](line)
    return key, (path, line, cells)


class _JoinSideFn(beam.DoFn):
  """(id, {ratings, side}) -> ratings with the side's cells, keyed for the next join."""

  def __init__(self, kind, next_key, spec=None, split_key="", eval_fraction=0.2):
    self._kind = kind
    self._next_key = next_key
    self._spec = spec
    self._split_key = split_key
    self._eval_fraction = eval_fraction
    self._rejected = base.counter(base.ROWS_REJECTED)
    self._side_rejected = base.counter(f"movielens_{kind}s_rejected")
    self._side_joined = base.counter(f"movielens_{kind}s_joined")
    self._side_unused = base.counter(f"movielens_{kind}s_unused")
    self._missing = ({f.name: base.counter(f"missing_{f.name}") for f in spec.raw_fields}
                     if spec is not None else None)

  def process(self, element):
    key, grouped = element
    sides = sorted(grouped["side"], key=lambda r: (r[0], r[1]))
    for path, line, _ in sides[1:]:
      self._side_rejected.inc()
      yield base.dead_letter(path, line, f"duplicate {self._kind} id {key!r} (the copy "
                             f"kept is in {sides[0][0]})")
    used = False
    for path, line, cells in grouped["ratings"]:
      if not sides:
        self._rejected.inc()
        yield base.dead_letter(path, line, f"{self._kind}_id {key!r} is not in "
                               f"{ml.FILES[self._kind]}")
        continue
      merged = dict(cells, **sides[0][2])
      if self._spec is None:
        used = True
        yield merged[self._next_key], (path, line, merged)
        continue
      try:
        record = parse_record(self._spec, merged, self._missing)
      except base.DATA_ERRORS as e:
        self._rejected.inc()
        yield base.dead_letter(path, line, base.reason_of(e))
        continue
      used = True
      yield base.split_for(record, self._split_key, line, self._eval_fraction), record
    if sides:
      (self._side_joined if used else self._side_unused).inc()


@beam.ptransform_fn
def ReadMovieLens(p, files, spec, split_key="", eval_fraction=0.2, progress_prefix=""):
  """Ratings joined with their user (CoGroupByKey on user id), then with their movie
  (CoGroupByKey on item id); label = rating >= 4. `files` is {kind: path}
  (`movielens.layout_files`). Records carry user_id, item_id, rating, timestamp,
  click, age, gender, occupation, zip_code, title, release_year, genres (a list) and
  first_genre; the spec picks the ones it declares (its histories are computed by the
  job after this source, from the timestamps)."""
  ratings = (p | "ReadRatings" >> base.ReadLines([files[ml.RATINGS]])
             | "ParseRatings" >> base.ParseLines(_ParseRatingFn(),
                                                 progress_prefix=progress_prefix))
  sides = {}
  for kind in (ml.USERS, ml.ITEMS):
    sides[kind] = (p | f"Read{kind}s" >> base.ReadLines([files[kind]])
                   | f"Parse{kind}s" >> base.ParseLines(_ParseSideFn(kind)))
  with_users = ({"ratings": ratings["rows"], "side": sides[ml.USERS]["rows"]}
                | "JoinUsers" >> beam.CoGroupByKey()
                | "AttachUsers" >> beam.ParDo(_JoinSideFn(ml.USERS, "item_id")).with_outputs(
                    DEAD_LETTER, main="rows"))
  joined = ({"ratings": with_users["rows"], "side": sides[ml.ITEMS]["rows"]}
            | "JoinItems" >> beam.CoGroupByKey()
            | "AttachItems" >> beam.ParDo(_JoinSideFn(
                ml.ITEMS, None, spec, split_key, eval_fraction)).with_outputs(
                    DEAD_LETTER, main=RECORDS))
  dead = ((ratings[DEAD_LETTER], sides[ml.USERS][DEAD_LETTER],
           sides[ml.ITEMS][DEAD_LETTER], with_users[DEAD_LETTER],
           joined[DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten())
  return {RECORDS: joined[RECORDS], DEAD_LETTER: dead}


class MovieLensSource(base.Source):
  """`--raw` is the folder holding u.data, u.user and u.item (or u.data itself)."""
  name = C.MOVIELENS
  label = "MovieLens"

  def resolve(self, config, spec):
    files = ml.layout_files(config.raw)
    missing = [p for p in files.values() if not FileSystems.exists(p)]
    if missing:
      names = ", ".join(ml.FILES[k] for k in (ml.RATINGS, ml.USERS))
      raise C.PreprocessError(
          f"--raw={config.raw}: MovieLens needs {names} and {ml.FILES[ml.ITEMS]} in one "
          f"folder; missing {missing} (get it with `hmdn data fetch movielens-100k`)")
    return base.Inputs(tuple(files.values()), C.MOVIELENS,
                       folders=(os.path.dirname(files[ml.RATINGS]),))

  def read(self, p, inputs, spec, config, progress_prefix=""):
    return p | self.label >> ReadMovieLens(ml.layout_files(config.raw), spec,
                                           config.split_key, config.eval_fraction,
                                           progress_prefix)
