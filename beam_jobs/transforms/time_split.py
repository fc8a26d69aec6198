"""The train/eval split: by a key's hash, or by a time field's cutoff."""
import hashlib

import apache_beam as beam

from hmdn.beam_jobs.transforms.batches import Batch, regroup
from hmdn.features.preprocessed import EVAL, TRAIN


def split_of(key: str, eval_fraction: float) -> str:
  """Deterministic train/eval assignment from a key (stable across runs and runners)."""
  return split_of_bytes(key.encode("utf-8"), eval_fraction)


def split_of_bytes(key: bytes, eval_fraction: float) -> str:
  """`split_of` of a key's UTF-8 bytes (the first 32 bits of its MD5, mod 10,000)."""
  bucket = int.from_bytes(hashlib.md5(key).digest()[:4], "big") % 10_000
  return EVAL if bucket < eval_fraction * 10_000 else TRAIN


@beam.ptransform_fn
@beam.typehints.with_input_types(Batch)
def SplitByTime(batches, field, cutoff=None, quantile=None):
  """Re-splits record batches by a time field: eval = time >= cutoff.

  The cutoff is given, or the `quantile` of the field over all rows, computed by a
  distributed approximate-quantiles combine (one value reaches the workers as a side
  input, never the data). Returns (record batches, a PCollection of the one cutoff).
  """
  if cutoff is not None:
    cut = batches.pipeline | "Cutoff" >> beam.Create([float(cutoff)])
  else:
    steps = 1000
    cut = (batches
           | "TimeValues" >> beam.FlatMap(lambda b: [float(t) for t in b[1][field]])
           | "TimeQuantiles" >> beam.ApproximateQuantiles.Globally(steps + 1)
           | "PickCutoff" >> beam.Map(lambda qs: float(qs[round(quantile * steps)])
                                      if qs else 0.0))
  split = batches | "SplitAtCutoff" >> beam.FlatMap(
      lambda b, c: regroup(b, [EVAL if float(t) >= c else TRAIN for t in b[1][field]]),
      beam.pvalue.AsSingleton(cut))
  return split, cut
