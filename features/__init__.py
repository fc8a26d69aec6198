"""The feature spec: the single source of truth for every field (see spec/).

Every package of the project imports this one first, so the Keras switch is set here,
once: TFRS 0.7.7 only imports with legacy Keras (tf-keras 2.x), and the switch must be
in the environment before TensorFlow is first imported.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from hmdn.features.spec import (CATEGORICAL, FEATURE, LABEL, MULTI_CATEGORICAL,  # noqa: E402
                                NUMERIC, ORACLE, PASSTHROUGH, Feature, FeatureSpec, SpecError,
                                load_spec, spec_from_dict)
