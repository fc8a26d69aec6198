"""The feature spec: the single declaration of every field of a dataset.

Callers import the package (`from features import spec as spec_lib`); its modules are
`kinds` (the constants and SpecError), `schema` (Feature, Derived, FeatureSpec and the
TF specs derived from them), `validation` (the rules, checked on construction), `cells`
(one raw cell -> a value, never coerced) and `loading` (YAML in and out).
"""
from hmdn.features.spec.cells import (check_cell, check_tasks, parse_value, truncate,
                                      violates_after)
from hmdn.features.spec.kinds import (BUCKET, CATEGORICAL, COUNT_BUCKET, CROSS,
                                      DEFAULT_MAX_LENGTH, DERIVED_KINDS, FEATURE,
                                      FIELD_NAME_PATTERN, FLOAT32_MAX, HISTORY, KINDS, LABEL,
                                      MAX_CELL_CHARS, MODE, MULTI_CATEGORICAL, NUMERIC, ORACLE,
                                      PASSTHROUGH, PROFILE_KINDS, ROLES, SEQUENCE, SHARE,
                                      TABLE_KINDS, SpecError)
from hmdn.features.spec.loading import (SPECS_DIR, load_spec, read_text, spec_from_dict,
                                        spec_from_yaml, write_text)
from hmdn.features.spec.schema import Derived, Feature, FeatureSpec, HistoryGroup
from hmdn.features.spec.validation import output_names
