"""The HMDRR residual quantizer: its options (`config`), the layer (`layer`), its
residual chain (`chain`), the seeding of its codebooks (`seeding`), their learning
after seeding (`updates`) and code health (`health`)."""
from hmdn.models.quantizer.config import CODEBOOK_UPDATES, QuantizerConfig
from hmdn.models.quantizer.layer import ResidualQuantizer

__all__ = ["CODEBOOK_UPDATES", "QuantizerConfig", "ResidualQuantizer"]
