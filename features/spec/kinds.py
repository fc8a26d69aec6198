"""The words a spec is written in: field kinds, roles, derived kinds, the limits on a raw
cell and SpecError. Every module of the spec package imports them from here."""

CATEGORICAL = "categorical"
MULTI_CATEGORICAL = "multi_categorical"
NUMERIC = "numeric"
# An ordered list of categorical values, most recent last (a behaviour history); it
# shares the vocabulary and embedding of its `vocab_from` field.
SEQUENCE = "sequence"
KINDS = (CATEGORICAL, MULTI_CATEGORICAL, NUMERIC, SEQUENCE)
DEFAULT_MAX_LENGTH = 50  # a sequence's default max_length

FEATURE = "feature"  # an input of the model
LABEL = "label"  # the click label, 0 or 1
PASSTHROUGH = "passthrough"  # kept in the TFRecords (e.g. a CVR label), not a model input
ORACLE = "oracle"  # a synthetic row's true probability of a task (`task`): the oracle AUC
ROLES = (FEATURE, LABEL, PASSTHROUGH, ORACLE)

# Kinds of derived field (computed from other fields, never read from the raw log).
COUNT_BUCKET = "count_bucket"  # bucketed count of the source value in the training split
CROSS = "cross"  # the source values joined by `separator`
BUCKET = "bucket"  # a numeric source bucketized at `boundaries`
MODE = "mode"  # the most frequent `of` value of the source value in the training split
SHARE = "share"  # bucketed share of the source value's training rows whose `of` is `value`
HISTORY = "history"  # a sequence: the `of` values of the source value's earlier rows
DERIVED_KINDS = (COUNT_BUCKET, CROSS, BUCKET, MODE, SHARE, HISTORY)
TABLE_KINDS = (COUNT_BUCKET, MODE, SHARE)  # over the training split: a lookup table each
PROFILE_KINDS = (MODE, SHARE)  # per-key profiles of another field `of`

# A raw cell longer than this is rejected (dead letter / request error): no real id or
# number is this long, and one huge cell must not abort a job or bloat a vocabulary.
MAX_CELL_CHARS = 10_000
FLOAT32_MAX = 3.4028234663852886e38
# A field name is a tf.Example key, a file name under vocab/ and tables/, and an
# argument name of the serving signatures: letters, digits and underscores only.
FIELD_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_]{0,127}"


class SpecError(ValueError):
  """A feature spec (or a value checked against it) is wrong; the message names it."""
