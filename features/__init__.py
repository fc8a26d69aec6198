"""The feature spec: the single source of truth for every field (see spec.py)."""
from features.spec import (CATEGORICAL, FEATURE, LABEL, MULTI_CATEGORICAL, NUMERIC,
                           ORACLE, PASSTHROUGH, Feature, FeatureSpec, SpecError,
                           load_spec, spec_from_dict)
