"""What a run's length implies, checked before any work: a warm-up (of the codebooks or
of the learning rate) the run would never leave is refused, a default codebook warm-up
too long for a short run follows its length, and an epoch of a few steps gets a hint."""
import dataclasses
import math
from typing import Optional

from hmdn.features import options
from hmdn.pipeline.train_config import TrainConfig


def steps_per_epoch(config: TrainConfig, train_rows: int) -> int:
  """Training steps of one epoch: `--steps_per_epoch`, or one pass over the split."""
  return config.steps_per_epoch or max(1, train_rows // config.batch_size)


def check_quantizer_starts(config: TrainConfig, epoch_steps: int) -> None:
  """An HMDN run shorter than its codebook warm-up would never quantize: its codes
  would all be 0 and its s_D a constant, and it would still export."""
  total = epoch_steps * config.epochs
  warmup = config.model.hmdrr.quantizer.warmup_steps
  if config.model.quantizes and warmup >= total:
    raise ValueError(
        f"--codebook_warmup_steps={warmup}: the run has only {total} training steps "
        f"({config.epochs} epochs x {epoch_steps}), so the quantizer would never "
        "start; lower it or train longer")


def check_lr_warmup(config: TrainConfig, epoch_steps: int) -> None:
  """A learning-rate warm-up as long as the run would never reach the set rate."""
  total = epoch_steps * config.epochs
  if config.lr_schedule == "cosine" and config.warmup_steps >= total:
    raise ValueError(
        f"--warmup_steps={config.warmup_steps}: the run has only {total} training steps "
        f"({config.epochs} epochs x {epoch_steps}), so the learning rate would never "
        "leave its warm-up; lower it or train longer")


# A codebook warm-up that follows the run's length takes this share of the run.
CODEBOOK_WARMUP_SHARE = 3  # one third: two thirds of the steps quantize


def followed_codebook_warmup(config: TrainConfig, epoch_steps: int) -> Optional[int]:
  """The codebook warm-up a run of `config`'s length follows when its own needs a
  longer run (fewer than 3 times its steps): a third of the run; None when it fits."""
  total = epoch_steps * config.epochs
  if total >= CODEBOOK_WARMUP_SHARE * config.model.hmdrr.quantizer.warmup_steps:
    return None
  return max(1, total // CODEBOOK_WARMUP_SHARE)


def with_codebook_warmup(config: TrainConfig, epoch_steps: int, followed: int,
                         log=print) -> TrainConfig:
  """`config` with the followed warm-up, said in one line."""
  warmup, total = config.model.hmdrr.quantizer.warmup_steps, epoch_steps * config.epochs
  log(f"note: --codebook_warmup_steps follows the run's length: {followed} steps (the "
      f"default {warmup} needs a run of {CODEBOOK_WARMUP_SHARE * warmup} steps or more; "
      f"this one has {total}); set the flag to choose", flush=True)
  return dataclasses.replace(config, model=options.with_values(
      config.model, {"codebook_warmup_steps": followed}))


def follow_codebook_warmup(config: TrainConfig, epoch_steps: int,
                           log=print) -> TrainConfig:
  """The default codebook warm-up on a run too short for it: a third of the run
  instead, said in one line. Only for a warm-up the user did not set (an explicit one
  too long is refused by check_quantizer_starts)."""
  followed = followed_codebook_warmup(config, epoch_steps)
  if not config.model.quantizes or followed is None:
    return config
  return with_codebook_warmup(config, epoch_steps, followed, log)


# Fewer training steps per epoch than this learn little (a 5k-row log at batch 512:
# 7 steps, AUC 0.55; at batch 64: 0.63): the trainer names --batch_size.
FEW_STEPS_PER_EPOCH = 50


def hint_few_steps(config: TrainConfig, train_rows: int, epoch_steps: int,
                   log=print) -> None:
  """One line when an epoch is a few steps only, naming a --batch_size that gives
  FEW_STEPS_PER_EPOCH of them."""
  if config.steps_per_epoch or epoch_steps >= FEW_STEPS_PER_EPOCH:
    return
  batch = 2 ** max(0, int(math.log2(max(1, train_rows // FEW_STEPS_PER_EPOCH))))
  if batch >= config.batch_size:
    return
  log(f"note: {epoch_steps} training steps per epoch ({train_rows:,} rows / "
      f"--batch_size={config.batch_size}): few steps learn little; --batch_size={batch} "
      f"takes {train_rows // batch}", flush=True)
