"""Keras layers and models of HMDN and its backbones (tf.keras / tf-keras 2.x).

The layers are a library too (docs/library.md): the HMDRR layer, the backbones and the
CTR model are importable from here and serializable under the Keras package "hmdn".
"""
import hmdn.features  # noqa: F401  (selects legacy Keras before TensorFlow loads)

import tensorflow as tf  # noqa: E402

if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
  raise ImportError(
      "hmdn needs tf-keras 2 (legacy Keras) but tf.keras was loaded as Keras 3: set "
      "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, or import hmdn first.")

from hmdn.models.attention import MaskedMeanPooling, TargetAttention  # noqa: E402
from hmdn.models.backbones import (APG, DNN, ESMM, MMoE, MoE, PLE, STAR,  # noqa: E402
                                   Backbone, EPNet, HiNet, get_backbone)
from hmdn.models.ctr_model import CTRModel  # noqa: E402
from hmdn.models.embedding import FeatureEmbeddings  # noqa: E402
from hmdn.models.hierarchical import (  # noqa: E402
    HierarchicalDistributionRepresentation, HMDRRConfig)
from hmdn.models.quantizer import QuantizerConfig, ResidualQuantizer  # noqa: E402
from hmdn.models.registry import ModelConfig, model_names  # noqa: E402
