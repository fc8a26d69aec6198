"""The `ali_ccp_raw` source: Ali-CCP's raw release, each sample_skeleton_<part>.csv
joined with its common_features_<part>.csv (the line format: beam_jobs/ali_ccp_format)."""
import apache_beam as beam

from hmdn.beam_jobs import ali_ccp_format as fmt
from hmdn.beam_jobs import config as C
from hmdn.beam_jobs.transforms.batches import DEAD_LETTER, RECORDS
from hmdn.beam_jobs.transforms.parse import parse_record
from hmdn.beam_jobs.sources import base
from hmdn.features import spec as spec_lib

COMMON_READ = "ali_ccp_common_rows_read"
COMMON_REJECTED = "ali_ccp_common_rows_rejected"


class _ParseSkeletonFn(base.LineParserFn):
  """(file, line) -> (sample_id, (file, line, join key, cells)) or a dead letter."""

  def parse(self, path, line):
    sample_id, index, cells = fmt.parse_skeleton_line(line)
    return sample_id, (path, line, f"{fmt.part_of(path)}/{index}", cells)


class _ParseCommonFn(base.LineParserFn):
  """(file, line) -> (join key, (file, line, {field: [ids]})) or a dead letter."""

  def __init__(self):
    super().__init__(COMMON_READ, COMMON_REJECTED)

  def parse(self, path, line):
    index, features = fmt.parse_common_line(line)
    return f"{fmt.part_of(path)}/{index}", (path, line, features)


class _DedupeSamplesFn(beam.DoFn):
  """(sample_id, rows) -> the first row by (file, line); the others are dead letters:
  a repeated sample id is ambiguous, and which copy is kept must not depend on the
  runner."""

  def __init__(self):
    self._rejected = base.counter(base.ROWS_REJECTED)

  def process(self, element):
    sample_id, rows = element
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    for path, line, _, _ in rows[1:]:
      self._rejected.inc()
      yield base.dead_letter(path, line, f"duplicate sample_id {sample_id!r} (the copy "
                             f"kept is in {rows[0][0]})")
    path, line, key, cells = rows[0]
    yield key, (path, line, cells)


class _JoinCommonFn(beam.DoFn):
  """(join key, {skeleton, common}) -> (split, record): a sample's own features plus
  its user's common features, typed by the spec."""

  def __init__(self, spec, split_key, eval_fraction):
    self._spec = spec
    self._split_key = split_key
    self._eval_fraction = eval_fraction
    self._rejected = base.counter(base.ROWS_REJECTED)
    self._common_rejected = base.counter(COMMON_REJECTED)
    self._common_joined = base.counter("ali_ccp_common_rows_joined")
    self._common_unused = base.counter("ali_ccp_common_rows_unused")
    self._missing = {f.name: base.counter(f"missing_{f.name}") for f in spec.raw_fields}

  def process(self, element):
    key, grouped = element
    commons = sorted(grouped["common"], key=lambda r: (r[0], r[1]))
    for path, line, _ in commons[1:]:
      self._common_rejected.inc()
      yield base.dead_letter(path, line, f"duplicate common_feature_index "
                             f"{key.split('/', 1)[1]!r} (the copy kept is in "
                             f"{commons[0][0]})")
    common = commons[0][2] if commons else None
    used = False
    for path, line, cells in grouped["skeleton"]:
      if common is None:
        self._rejected.inc()
        part, index = key.split("/", 1)
        yield base.dead_letter(path, line, f"common_feature_index {index!r} is not in "
                               f"{fmt.common_file(part)}")
        continue
      try:
        merged = dict(common)
        merged.update(cells)
        record = parse_record(self._spec, self._single_valued(merged), self._missing)
      except base.DATA_ERRORS as e:
        self._rejected.inc()
        yield base.dead_letter(path, line, base.reason_of(e))
        continue
      used = True
      yield base.split_for(record, self._split_key, cells["sample_id"],
                           self._eval_fraction), record
    if commons:
      (self._common_joined if used else self._common_unused).inc()

  def _single_valued(self, merged):
    for f in self._spec.raw_fields:
      ids = merged.get(f.name)
      if isinstance(ids, list) and f.kind not in (spec_lib.MULTI_CATEGORICAL,
                                                  spec_lib.SEQUENCE):
        if len(ids) > 1:
          raise spec_lib.SpecError(f"field {f.name!r} has {len(ids)} feature ids "
                                   f"{ids[:4]}, but the spec declares it single-valued")
        merged[f.name] = ids[0] if ids else None
    return merged


@beam.ptransform_fn
def ReadAliCcpRaw(p, paths, spec, split_key="", eval_fraction=0.2, progress_prefix=""):
  """Ali-CCP's raw release: each skeleton row (one impression) joined with its common
  features (the user side) on (part, common_feature_index) by a CoGroupByKey; repeated
  sample ids are found by a GroupByKey. The split hashes the sample id by default."""
  parts = fmt.ali_ccp_files(paths)
  skeleton_files = [f for part in parts.values() for f in part["skeleton"]]
  common_files = [f for part in parts.values() for f in part["common"]]
  skeleton = (p | "ReadSkeleton" >> base.ReadLines(skeleton_files)
              | "ParseSkeleton" >> base.ParseLines(_ParseSkeletonFn(),
                                                   progress_prefix=progress_prefix))
  common = (p | "ReadCommon" >> base.ReadLines(common_files)
            | "ParseCommon" >> base.ParseLines(_ParseCommonFn()))
  unique = (skeleton["rows"]
            | "GroupBySampleId" >> beam.GroupByKey()
            | "DedupeSamples" >> beam.ParDo(_DedupeSamplesFn()).with_outputs(
                DEAD_LETTER, main="rows"))
  joined = ({"skeleton": unique["rows"], "common": common["rows"]}
            | "JoinCommonFeatures" >> beam.CoGroupByKey()
            | "BuildRecords" >> beam.ParDo(_JoinCommonFn(
                spec, split_key, eval_fraction)).with_outputs(
                    DEAD_LETTER, main=RECORDS))
  dead = ((skeleton[DEAD_LETTER], common[DEAD_LETTER], unique[DEAD_LETTER],
           joined[DEAD_LETTER]) | "FlattenDeadLetters" >> beam.Flatten())
  return {RECORDS: joined[RECORDS], DEAD_LETTER: dead}


class AliCcpRawSource(base.Source):
  name = C.ALI_CCP_RAW
  label = "AliCcpRaw"

  def resolve(self, config, spec):
    paths = base.match_paths(config.raw)
    try:
      fmt.ali_ccp_files(paths)
    except ValueError as e:
      raise C.PreprocessError(str(e))
    return base.Inputs(tuple(paths), C.ALI_CCP_RAW,
                       duplicates=tuple(base.duplicate_paths(config.raw)))

  def read(self, p, inputs, spec, config, progress_prefix=""):
    return p | self.label >> ReadAliCcpRaw(list(inputs.paths), spec, config.split_key,
                                           config.eval_fraction, progress_prefix)
