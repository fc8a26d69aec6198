"""Sources: raw logs of a known layout -> the parsed records every source produces.

Each source is one composable transform applied to the pipeline root; its result has
the tags of `transforms.ParseRows`: `records` ((split, record) pairs whose record holds
every raw field of the spec, typed) and `dead_letter` ({source, row, reason}). Rows are
counted in the job's namespace (`rows_read`, `rows_rejected`; side files such as
Ali-CCP's common features or MovieLens' users and items have their own read / joined /
unused / rejected counters), so read = written + rejected holds for every source.

  generic      CSV (with a header) or JSONL described by the spec: `ReadGeneric`
  ali_ccp_raw  sample_skeleton_<part>.csv joined with common_features_<part>.csv
  movielens    the ml-100k layout: u.data, u.user, u.item (latin-1)
"""
import os
import re
from typing import Dict, List, Mapping, Sequence, Tuple

import apache_beam as beam

from beam_jobs import transforms as T
from features import spec as spec_lib

GENERIC = "generic"
ALI_CCP_RAW = "ali_ccp_raw"
MOVIELENS = "movielens"
SOURCES = (GENERIC, ALI_CCP_RAW, MOVIELENS)


def _counter(name):
  return beam.metrics.Metrics.counter(T.NAMESPACE, name)


def _dead(source, row, reason):
  return beam.pvalue.TaggedOutput(T.DEAD_LETTER,
                                  {"source": source, "row": row, "reason": reason})


def _split(record, split_key, fallback_key, eval_fraction):
  key = str(record[split_key]) if split_key else fallback_key
  return T.split_of(key, eval_fraction)


@beam.ptransform_fn
def ReadGeneric(p, paths, spec, input_format, headers, delimiter=",", split_key="",
                eval_fraction=0.2):
  """CSV / JSONL files described by the spec (the column names are its field names)."""
  lines = [
      p | f"Read{i}" >> beam.io.ReadFromTextWithFilename(
          path, skip_header_lines=1 if input_format == "csv" else 0)
      for i, path in enumerate(paths)]
  return (lines | "FlattenFiles" >> beam.Flatten()
          | "DropBlankLines" >> beam.Filter(lambda fl: fl[1].strip() != "")
          | "ParseRows" >> T.ParseRows(spec, input_format, headers, delimiter, split_key,
                                       eval_fraction))


# --- Ali-CCP, raw release format --------------------------------------------------------
SKELETON = "sample_skeleton_"
COMMON = "common_features_"
ENTRY_SEP, FIELD_SEP, VALUE_SEP = "\x01", "\x02", "\x03"
ALI_CCP_MULTI_VALUED = ("109_14", "110_14", "127_14", "150_14")


def ali_ccp_files(paths: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
  """{part: {"skeleton": [...], "common": [...]}} from file names
  `sample_skeleton_<part>.csv` / `common_features_<part>.csv`; raises ValueError on a
  file of another name or a skeleton part without its common-features file."""
  parts: Dict[str, Dict[str, List[str]]] = {}
  for path in paths:
    base = os.path.basename(path)
    m = re.match(rf"^({SKELETON}|{COMMON})(.+?)\.csv$", base)
    if not m:
      raise ValueError(f"{path}: an Ali-CCP raw file is named {SKELETON}<part>.csv or "
                       f"{COMMON}<part>.csv")
    kind = "skeleton" if m.group(1) == SKELETON else "common"
    parts.setdefault(m.group(2), {"skeleton": [], "common": []})[kind].append(path)
  for part, files in parts.items():
    if files["skeleton"] and not files["common"]:
      raise ValueError(f"{files['skeleton'][0]}: no {COMMON}{part}.csv among the input "
                       "files to join it with")
  if not any(f["skeleton"] for f in parts.values()):
    raise ValueError(f"no {SKELETON}<part>.csv among {list(paths)}")
  return parts


def _part_of(path: str) -> str:
  base = os.path.basename(path)
  prefix = SKELETON if base.startswith(SKELETON) else COMMON
  return base[len(prefix):-len(".csv")]


def parse_feature_list(text: str, declared_count: str) -> Dict[str, List[str]]:
  """`field\\x02id\\x03value` entries joined by \\x01 -> {field: [ids]}; raises
  SpecError on an entry without its separators, a non-numeric value or a count that
  does not match `feature_count`."""
  try:
    count = int(declared_count)
  except ValueError:
    raise spec_lib.SpecError(f"feature_count {declared_count!r} is not an integer")
  entries = text.split(ENTRY_SEP) if text else []
  if count != len(entries):
    raise spec_lib.SpecError(f"feature_count is {count} but the feature list has "
                             f"{len(entries)} entries")
  out: Dict[str, List[str]] = {}
  for i, entry in enumerate(entries):
    field, sep, rest = entry.partition(FIELD_SEP)
    if not sep:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r} has no \\x02 between field "
                               "and feature id")
    fid, sep, value = rest.partition(VALUE_SEP)
    if not sep:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r} has no \\x03 between "
                               "feature id and value")
    if not field or not fid:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r}: empty field or feature id")
    try:
      float(value)
    except ValueError:
      raise spec_lib.SpecError(f"feature entry {i} {entry!r}: value {value!r} is not "
                               "a number")
    out.setdefault(field, []).append(fid)
  return out


class _ParseSkeletonFn(beam.DoFn):
  """(file, line) -> (sample_id, (file, line, join key, cells)) or a dead letter."""

  def __init__(self):
    self._read = _counter("rows_read")
    self._rejected = _counter("rows_rejected")

  def process(self, element):
    path, line = element
    self._read.inc()
    try:
      cells = line.split(",")
      if len(cells) != 6:
        raise spec_lib.SpecError(
            f"expected 6 comma-separated fields (sample_id, click, purchase, "
            f"common_feature_index, feature_count, feature_list), got {len(cells)}")
      sample_id, click, purchase, index, count, feature_list = cells
      if not sample_id or not index:
        raise spec_lib.SpecError("empty sample_id or common_feature_index")
      features = parse_feature_list(feature_list, count)
    except spec_lib.SpecError as e:
      self._rejected.inc()
      yield _dead(path, line, str(e))
      return
    cells = dict(features, sample_id=sample_id, click=click, purchase=purchase)
    yield sample_id, (path, line, f"{_part_of(path)}/{index}", cells)


class _ParseCommonFn(beam.DoFn):
  """(file, line) -> (join key, (file, line, {field: [ids]})) or a dead letter."""

  def __init__(self):
    self._read = _counter("ali_ccp_common_rows_read")
    self._rejected = _counter("ali_ccp_common_rows_rejected")

  def process(self, element):
    path, line = element
    self._read.inc()
    try:
      cells = line.split(",")
      if len(cells) != 3:
        raise spec_lib.SpecError(
            f"expected 3 comma-separated fields (common_feature_index, feature_count, "
            f"feature_list), got {len(cells)}")
      index, count, feature_list = cells
      if not index:
        raise spec_lib.SpecError("empty common_feature_index")
      features = parse_feature_list(feature_list, count)
    except spec_lib.SpecError as e:
      self._rejected.inc()
      yield _dead(path, line, str(e))
      return
    yield f"{_part_of(path)}/{index}", (path, line, features)


class _DedupeSamplesFn(beam.DoFn):
  """(sample_id, rows) -> the first row by (file, line); the others are dead letters:
  a repeated sample id is ambiguous, and which copy is kept must not depend on the
  runner."""

  def __init__(self):
    self._rejected = _counter("rows_rejected")

  def process(self, element):
    sample_id, rows = element
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    for path, line, _, _ in rows[1:]:
      self._rejected.inc()
      yield _dead(path, line, f"duplicate sample_id {sample_id!r} (the copy kept is "
                  f"in {rows[0][0]})")
    path, line, key, cells = rows[0]
    yield key, (path, line, cells)


class _JoinCommonFn(beam.DoFn):
  """(join key, {skeleton, common}) -> (split, record): a sample's own features plus
  its user's common features, typed by the spec."""

  def __init__(self, spec, split_key, eval_fraction):
    self._spec = spec
    self._split_key = split_key
    self._eval_fraction = eval_fraction
    self._rejected = _counter("rows_rejected")
    self._common_rejected = _counter("ali_ccp_common_rows_rejected")
    self._common_joined = _counter("ali_ccp_common_rows_joined")
    self._common_unused = _counter("ali_ccp_common_rows_unused")
    self._missing = {f.name: _counter(f"missing_{f.name}") for f in spec.raw_fields}

  def process(self, element):
    key, grouped = element
    commons = sorted(grouped["common"], key=lambda r: (r[0], r[1]))
    for path, line, _ in commons[1:]:
      self._common_rejected.inc()
      yield _dead(path, line, f"duplicate common_feature_index {key.split('/', 1)[1]!r} "
                  f"(the copy kept is in {commons[0][0]})")
    common = commons[0][2] if commons else None
    used = False
    for path, line, cells in grouped["skeleton"]:
      if common is None:
        self._rejected.inc()
        part, index = key.split("/", 1)
        yield _dead(path, line, f"common_feature_index {index!r} is not in "
                    f"{COMMON}{part}.csv")
        continue
      try:
        merged = dict(common)
        merged.update(cells)
        record = T.parse_record(self._spec, self._single_valued(merged), self._missing)
      except spec_lib.SpecError as e:
        self._rejected.inc()
        yield _dead(path, line, str(e))
        continue
      used = True
      yield _split(record, self._split_key, cells["sample_id"],
                   self._eval_fraction), record
    if commons:
      (self._common_joined if used else self._common_unused).inc()

  def _single_valued(self, merged):
    for f in self._spec.raw_fields:
      ids = merged.get(f.name)
      if isinstance(ids, list) and f.kind != spec_lib.MULTI_CATEGORICAL:
        if len(ids) > 1:
          raise spec_lib.SpecError(f"field {f.name!r} has {len(ids)} feature ids "
                                   f"{ids[:4]}, but the spec declares it single-valued")
        merged[f.name] = ids[0] if ids else None
    return merged


@beam.ptransform_fn
def ReadAliCcpRaw(p, paths, spec, split_key="", eval_fraction=0.2):
  """Ali-CCP's raw release: each skeleton row (one impression) joined with its common
  features (the user side) on (part, common_feature_index) by a CoGroupByKey; repeated
  sample ids are found by a GroupByKey. The split hashes the sample id by default."""
  parts = ali_ccp_files(paths)
  skeleton_files = [f for part in parts.values() for f in part["skeleton"]]
  common_files = [f for part in parts.values() for f in part["common"]]

  def read(files, label):
    lines = [p | f"Read{label}{i}" >> beam.io.ReadFromTextWithFilename(f)
             for i, f in enumerate(files)]
    return (lines | f"Flatten{label}" >> beam.Flatten()
            | f"DropBlank{label}" >> beam.Filter(lambda fl: fl[1].strip() != ""))

  skeleton = (read(skeleton_files, "Skeleton")
              | "ParseSkeleton" >> beam.ParDo(_ParseSkeletonFn()).with_outputs(
                  T.DEAD_LETTER, main="rows"))
  common = (read(common_files, "Common")
            | "ParseCommon" >> beam.ParDo(_ParseCommonFn()).with_outputs(
                T.DEAD_LETTER, main="rows"))
  unique = (skeleton["rows"]
            | "GroupBySampleId" >> beam.GroupByKey()
            | "DedupeSamples" >> beam.ParDo(_DedupeSamplesFn()).with_outputs(
                T.DEAD_LETTER, main="rows"))
  joined = ({"skeleton": unique["rows"], "common": common["rows"]}
            | "JoinCommonFeatures" >> beam.CoGroupByKey()
            | "BuildRecords" >> beam.ParDo(_JoinCommonFn(
                spec, split_key, eval_fraction)).with_outputs(
                    T.DEAD_LETTER, main=T.RECORDS))
  dead = ((skeleton[T.DEAD_LETTER], common[T.DEAD_LETTER], unique[T.DEAD_LETTER],
           joined[T.DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten())
  return {T.RECORDS: joined[T.RECORDS], T.DEAD_LETTER: dead}


# --- MovieLens-100K, the GroupLens ml-100k layout ---------------------------------------
ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
             "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
             "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
ML_LIKE = 4  # label: rating >= 4 is a "click"


class Latin1Coder(beam.coders.Coder):
  """u.item is latin-1 (accented titles), not UTF-8."""

  def encode(self, value):
    return value.encode("latin-1")

  def decode(self, value):
    return value.decode("latin-1")

  def is_deterministic(self):
    return True


class _ParseRatingFn(beam.DoFn):
  """u.data `user\\titem\\trating\\ttimestamp` -> (user_id, (line, cells))."""

  def __init__(self):
    self._read = _counter("rows_read")
    self._rejected = _counter("rows_rejected")

  def process(self, element):
    path, line = element
    self._read.inc()
    try:
      cells = line.rstrip("\r\n").split("\t")
      if len(cells) != 4:
        raise spec_lib.SpecError(f"expected 4 tab-separated fields (user item rating "
                                 f"timestamp), got {len(cells)}")
      user, item, rating, ts = cells
      try:
        value = float(rating)
      except ValueError:
        raise spec_lib.SpecError(f"rating {rating!r} is not a number")
      if not 1 <= value <= 5:
        raise spec_lib.SpecError(f"rating {rating!r} is not in 1..5")
      try:
        float(ts)
      except ValueError:
        raise spec_lib.SpecError(f"timestamp {ts!r} is not a number")
    except spec_lib.SpecError as e:
      self._rejected.inc()
      yield _dead(path, line, str(e))
      return
    yield user, (path, line, {"user_id": user, "item_id": item, "rating": rating,
                              "timestamp": ts,
                              "click": "1" if value >= ML_LIKE else "0"})


class _ParseSideFn(beam.DoFn):
  """u.user / u.item lines -> (id, (file, line, cells)) or a dead letter."""

  def __init__(self, kind):
    self._kind = kind
    self._read = _counter(f"movielens_{kind}s_read")
    self._rejected = _counter(f"movielens_{kind}s_rejected")

  def process(self, element):
    path, line = element
    self._read.inc()
    cells = line.rstrip("\r\n").split("|")
    try:
      if self._kind == "user":
        if len(cells) != 5:
          raise spec_lib.SpecError(f"expected 5 |-separated fields (id|age|gender|"
                                   f"occupation|zip), got {len(cells)}")
        uid, age, gender, occupation, zip_code = cells
        try:
          float(age)
        except ValueError:
          raise spec_lib.SpecError(f"age {age!r} is not a number")
        key, out = uid, {"age": age, "gender": gender, "occupation": occupation,
                         "zip_code": zip_code}
      else:
        if len(cells) != 5 + len(ML_GENRES):
          raise spec_lib.SpecError(f"expected {5 + len(ML_GENRES)} |-separated fields "
                                   f"(id|title|release date|video release|url|"
                                   f"{len(ML_GENRES)} genre flags), got {len(cells)}")
        flags = cells[5:]
        if any(f not in ("0", "1") for f in flags):
          raise spec_lib.SpecError(f"genre flags must be 0 or 1, got {flags}")
        m = re.search(r"(\d{4})$", cells[2].strip())
        key, out = cells[0], {
            "title": cells[1], "release_year": m.group(1) if m else "",
            "genres": [g for g, f in zip(ML_GENRES, flags) if f == "1"]}
    except spec_lib.SpecError as e:
      self._rejected.inc()
      yield _dead(path, line, str(e))
      return
    yield key, (path, line, out)


class _JoinSideFn(beam.DoFn):
  """(id, {ratings, side}) -> ratings with the side's cells, keyed for the next join."""

  def __init__(self, kind, next_key, spec=None, split_key="", eval_fraction=0.2):
    self._kind = kind
    self._next_key = next_key
    self._spec = spec
    self._split_key = split_key
    self._eval_fraction = eval_fraction
    self._rejected = _counter("rows_rejected")
    self._side_rejected = _counter(f"movielens_{kind}s_rejected")
    self._side_joined = _counter(f"movielens_{kind}s_joined")
    self._side_unused = _counter(f"movielens_{kind}s_unused")
    self._missing = ({f.name: _counter(f"missing_{f.name}") for f in spec.raw_fields}
                     if spec is not None else None)

  def process(self, element):
    key, grouped = element
    sides = sorted(grouped["side"], key=lambda r: (r[0], r[1]))
    for path, line, _ in sides[1:]:
      self._side_rejected.inc()
      yield _dead(path, line, f"duplicate {self._kind} id {key!r} (the copy kept is in "
                  f"{sides[0][0]})")
    used = False
    for path, line, cells in grouped["ratings"]:
      if not sides:
        self._rejected.inc()
        yield _dead(path, line, f"{self._kind}_id {key!r} is not in "
                    f"u.{self._kind}")
        continue
      merged = dict(cells, **sides[0][2])
      if self._spec is None:
        used = True
        yield merged[self._next_key], (path, line, merged)
        continue
      try:
        record = T.parse_record(self._spec, merged, self._missing)
      except spec_lib.SpecError as e:
        self._rejected.inc()
        yield _dead(path, line, str(e))
        continue
      used = True
      yield _split(record, self._split_key, line, self._eval_fraction), record
    if sides:
      (self._side_joined if used else self._side_unused).inc()


def movielens_files(raw: str) -> Dict[str, str]:
  """--raw for MovieLens is the folder holding u.data, u.user and u.item."""
  from apache_beam.io.filesystems import FileSystems
  base = raw.rstrip("/")
  if base.endswith("/u.data"):
    base = base[:-len("/u.data")]
  files = {k: f"{base}/u.{k}" for k in ("data", "user", "item")}
  missing = [p for p in files.values() if not FileSystems.exists(p)]
  if missing:
    raise ValueError(f"--raw={raw}: MovieLens needs u.data, u.user and u.item in one "
                     f"folder; missing {missing} (get it with `hmdn data fetch "
                     "movielens-100k`)")
  return files


@beam.ptransform_fn
def ReadMovieLens(p, raw, spec, split_key="", eval_fraction=0.2):
  """Ratings joined with their user (CoGroupByKey on user id), then with their movie
  (CoGroupByKey on item id); label = rating >= 4. Records carry user_id, item_id,
  rating, timestamp, click, age, gender, occupation, zip_code, title, release_year and
  genres (a list); the spec picks the ones it declares."""
  files = movielens_files(raw)
  ratings = (p | "ReadRatings" >> beam.io.ReadFromTextWithFilename(files["data"])
             | "DropBlankRatings" >> beam.Filter(lambda fl: fl[1].strip() != "")
             | "ParseRatings" >> beam.ParDo(_ParseRatingFn()).with_outputs(
                 T.DEAD_LETTER, main="rows"))
  sides = {}
  for kind in ("user", "item"):
    sides[kind] = (
        p | f"Read{kind}s" >> beam.io.ReadFromTextWithFilename(
            files[kind], coder=Latin1Coder())
        | f"DropBlank{kind}s" >> beam.Filter(lambda fl: fl[1].strip() != "")
        | f"Parse{kind}s" >> beam.ParDo(_ParseSideFn(kind)).with_outputs(
            T.DEAD_LETTER, main="rows"))
  with_users = ({"ratings": ratings["rows"], "side": sides["user"]["rows"]}
                | "JoinUsers" >> beam.CoGroupByKey()
                | "AttachUsers" >> beam.ParDo(_JoinSideFn("user", "item_id")).with_outputs(
                    T.DEAD_LETTER, main="rows"))
  joined = ({"ratings": with_users["rows"], "side": sides["item"]["rows"]}
            | "JoinItems" >> beam.CoGroupByKey()
            | "AttachItems" >> beam.ParDo(_JoinSideFn(
                "item", None, spec, split_key, eval_fraction)).with_outputs(
                    T.DEAD_LETTER, main=T.RECORDS))
  dead = ((ratings[T.DEAD_LETTER], sides["user"][T.DEAD_LETTER],
           sides["item"][T.DEAD_LETTER], with_users[T.DEAD_LETTER],
           joined[T.DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten())
  return {T.RECORDS: joined[T.RECORDS], T.DEAD_LETTER: dead}
