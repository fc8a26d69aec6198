"""The HMDRR residual quantizer: the layer (`layer`), its residual chain
(`chain`), the seeding of its codebooks (`seeding`), their learning after
seeding (`updates`) and code health (`health`)."""
from hmdn.models.quantizer.layer import CODEBOOK_UPDATES, ResidualQuantizer

__all__ = ["CODEBOOK_UPDATES", "ResidualQuantizer"]
