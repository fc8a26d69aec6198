"""HMDRR: the hierarchical distribution representation of HMDN (arXiv 2408.01332).

Dual-view extraction (explicit: distribution-field embeddings; implicit: all embeddings)
followed by multi-level residual quantization of each view. The concatenated quantized
views are `s_D`, the condition HMDN feeds to its backbone; the integer codes are
interpretable distribution ids, exported by the serving signature.
"""
from typing import Dict, Sequence

import tensorflow as tf

from models.mlp import MLP
from models.quantizer import ResidualQuantizer

EXTRACTIONS = ("explicit", "implicit", "dual")


def views_of(extraction: str):
  """The views an extraction quantizes, in the order their codes are concatenated."""
  return ["explicit", "implicit"] if extraction == "dual" else [extraction]


class HierarchicalDistributionRepresentation(tf.keras.layers.Layer):
  """Views -> residual quantizers -> s_D, partial sums and codes.

  With `extraction="dual"` each view has its own quantizer and the results are
  concatenated (explicit first), so `s_D` has `2 * distribution_dim` units.
  """

  def __init__(self,
               extraction: str = "dual",
               distribution_dim: int = 16,
               view_units: Sequence[int] = (64,),
               num_levels: int = 4,
               codebook_size: int = 16,
               shared_codebook: bool = False,
               codebook_update: str = "ema",
               decay: float = 0.99,
               beta: float = 0.25,
               commitment_weight: float = 1.0,
               seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    if extraction not in EXTRACTIONS:
      raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    if distribution_dim < 1:
      raise ValueError(f"distribution_dim must be >= 1, got {distribution_dim}")
    self.extraction = extraction
    self.distribution_dim = int(distribution_dim)
    self.view_units = [int(u) for u in view_units]
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.shared_codebook = bool(shared_codebook)
    self.codebook_update = codebook_update
    self.decay = float(decay)
    self.beta = float(beta)
    self.commitment_weight = float(commitment_weight)
    self.seed = int(seed)
    self.views = views_of(extraction)
    self._view_mlp = {}
    self._quantizer = {}
    for i, view in enumerate(self.views):
      self._view_mlp[view] = MLP(self.view_units + [self.distribution_dim],
                                 output_activation=None, name=f"{view}_view")
      self._quantizer[view] = ResidualQuantizer(
          num_levels=self.num_levels, codebook_size=self.codebook_size,
          shared_codebook=self.shared_codebook, codebook_update=self.codebook_update,
          decay=self.decay, beta=self.beta, commitment_weight=self.commitment_weight,
          seed=self.seed + i, name=f"{view}_quantizer")

  def quantizer(self, view: str) -> ResidualQuantizer:
    return self._quantizer[view]

  def call(self, inputs: Dict[str, tf.Tensor], training: bool = False
           ) -> Dict[str, tf.Tensor]:
    """inputs: {"explicit": [batch, De], "implicit": [batch, Di]} (the views used).

    Returns {"representation": [batch, views * d], "codes": [batch, views * D] int32,
    "codes_<view>": [batch, D], "partial_sums_<view>": [batch, D, d]}.
    """
    quantized, codes, out = [], [], {}
    for view in self.views:
      if view not in inputs:
        raise ValueError(f"the {view} view needs input {view!r}; got {sorted(inputs)}")
      x = self._view_mlp[view](inputs[view], training=training)
      q = self._quantizer[view](x, training=training)
      quantized.append(q["quantized"])
      codes.append(q["codes"])
      out[f"codes_{view}"] = q["codes"]
      out[f"partial_sums_{view}"] = q["partial_sums"]
    out["representation"] = tf.concat(quantized, axis=-1)
    out["codes"] = tf.concat(codes, axis=-1)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(extraction=self.extraction, distribution_dim=self.distribution_dim,
                  view_units=self.view_units, num_levels=self.num_levels,
                  codebook_size=self.codebook_size, shared_codebook=self.shared_codebook,
                  codebook_update=self.codebook_update, decay=self.decay, beta=self.beta,
                  commitment_weight=self.commitment_weight, seed=self.seed)
    return config
