"""The residual quantizer's options, declared once: the layer takes them as one
`QuantizerConfig` (or as keyword arguments of these names), HMDRR holds it, and
`ModelConfig` nests HMDRR's, so each option has one name, one default and one check
(`features.options.validate`) from the `--num_levels` flag down to the layer."""
import dataclasses

from hmdn.features.options import option, validate

CODEBOOK_UPDATES = ("ema", "loss")


@dataclasses.dataclass
class QuantizerConfig:
  """The HMDRR residual quantizer (`ResidualQuantizer`)."""
  num_levels: int = option(4, "D: residual quantization depth.", minimum=1)
  codebook_size: int = option(8, "K: codes per level (small, so level 1 cannot "
                              "memorise the leaves).", minimum=2)
  shared_codebook: bool = option(False, "One codebook shared by all levels.")
  codebook_update: str = option("ema", "How codebooks learn: EMA or the VQ-VAE "
                                "codebook loss.", CODEBOOK_UPDATES)
  decay: float = option(0.99, "EMA decay of the codebooks, in (0, 1).", above=0.0,
                        below=1.0)
  beta: float = option(0.25, "Commitment cost beta.", minimum=0.0)
  commitment_weight: float = option(1.0, "lambda: weight of the quantization losses "
                                    "(commitment averaged over levels).", minimum=0.0)
  # The flag is not --warmup_steps: that one is TrainConfig's learning-rate warm-up.
  warmup_steps: int = option(0, "Training steps before quantizing (views pass "
                             "through; seeding buffer fills).", minimum=0,
                             flag="codebook_warmup_steps")
  kmeans_iterations: int = option(5, "Lloyd iterations after k-means++ seeding.",
                                  minimum=0)
  restart_after_steps: int = option(100, "Restart a code unused for this many steps "
                                    "(0 = never).", minimum=0)
  buffer_size: int = option(2048, "Real vectors kept for seeding the codebooks "
                            "(at least --codebook_size).", minimum=1)

  def validate(self) -> "QuantizerConfig":
    """The declared rules, then: the seeding buffer holds a row per code."""
    validate(self)
    if self.buffer_size < self.codebook_size:
      raise ValueError(f"--buffer_size={self.buffer_size!r}: expected an integer >= "
                       f"--codebook_size ({self.codebook_size})")
    return self
