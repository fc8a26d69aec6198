"""The stages `hmdn` runs, as functions of config objects (no flags): each does one
stage and prints what a user reads at the end of it. `hmdn run` chains them.
"""
import os
import sys
from typing import Dict, Optional, Sequence

import tensorflow as tf

from hmdn.beam_jobs import generated_logs  # no Beam
from hmdn.features import locks, ownership
from hmdn.features.fileio import write_json_atomic
from hmdn.features.preprocessed import EVAL, PreprocessedData
from hmdn.features.run_directory import absolute
from hmdn.pipeline import data, evaluate, export, quiet, serving, train

WARMUP_ROWS = 8  # eval rows written into an export's warm-up requests
VERIFY_ROWS = 3  # eval rows `run` asks the export about in a fresh process


def generated_raw(output_dir: str) -> str:
  """The CSV files `generate` writes (beam_jobs/generated_logs.py owns the layout)."""
  return generated_logs.raw_glob(output_dir)


def generated_spec(output_dir: str) -> str:
  """The spec a generator writes beside its CSV files."""
  return generated_logs.spec_path(output_dir)


def generate(output_dir: str, generator, config, overwrite: bool = False) -> Dict:
  """A built-in generator (beam_jobs.generators) -> the summary of the log it wrote,
  into a directory that is new, empty or a generated log (replaced with `overwrite`)."""
  with locks.held(output_dir, "--output_dir"):
    # An unmarked log of an earlier version is ours only with its generator.json.
    ours = ownership.claim(
        output_dir, ownership.GENERATED, "--output_dir",
        signature=(generated_logs.SUMMARY_FILE,),
        own=lambda name: name in (generated_logs.RAW_DIR, generated_logs.SPEC_FILE,
                                  generated_logs.SUMMARY_FILE))
    if ours and not overwrite:
      raise ValueError(f"--output_dir={output_dir} holds a log generated earlier; pass "
                       "--overwrite to replace it, or use another --output_dir")
    summary = generator.generate(output_dir, config)
  extra = ""
  if "oracle_auc_purchase_cvr" in summary:  # the opt-in conversion task
    extra += (f"; purchases {summary['cvr']:.4f} of clicks, oracle AUC CVR "
              f"{summary['oracle_auc_purchase_cvr']:.4f} CTCVR "
              f"{summary['oracle_auc_purchase_ctcvr']:.4f}")
  if "browsing_nmi_user_top_category" in summary:  # the opt-in browsing
    extra += (f"; NMI(latent, user's top category) "
              f"{summary['browsing_nmi_user_top_category']:.3f}")
  print(f"generated {summary['rows']} rows with {generator.name!r} (CTR "
        f"{summary['ctr']:.4f}, oracle AUC {summary['oracle_auc']:.4f}{extra}) in "
        f"{generated_raw(output_dir)}; spec: {generated_spec(output_dir)}")
  return summary


def preprocess(config, beam_args: Sequence[str] = ()) -> Dict:
  """The Beam job (beam_jobs.config.PreprocessConfig) -> its metadata. The only stage
  that imports Beam."""
  from hmdn.beam_jobs import preprocess as preprocess_lib  # here: only this stage loads Beam
  with quiet.beam_worker_noise_filtered(sys.argv):
    metadata = preprocess_lib.run(config, beam_args=list(beam_args), require_splits=True)
  written = metadata["rows_written"]
  print(f"preprocess: {written['train']} train / {written['eval']} eval rows in "
        f"{config.output_dir}; dead letter: "
        f"{PreprocessedData(config.output_dir).dead_letter_prefix}-*")
  return metadata


def evaluate_and_report(predict, data_dir: str, model_config=None,
                        output: Optional[str] = None) -> Dict:
  """evaluate.run (with HMDN code usage when the model config is known); prints the
  per-distribution table and writes the metrics to `output` if given."""
  result = evaluate.run(predict, data_dir,
                        model_config.codebook_size if model_config else None,
                        model_config.code_views if model_config else [])
  print(evaluate.format_table(result))
  if output:
    write_json_atomic(output, result)
  return result


def train_evaluate_export(config, out: str, generator_summary: Optional[Dict] = None,
                          verify_export: bool = True,
                          follow_codebook_warmup_steps: bool = False,
                          keep_export_versions: int = 0) -> Dict:
  """After preprocessing: train (pipeline.train.TrainConfig), evaluate, export into
  `out/export`, write `out/metrics.json`, and check the export in a fresh process."""
  out = absolute(out)  # the fresh-process check runs from another directory
  model = train.train(config, follow_codebook_warmup_steps=follow_codebook_warmup_steps)
  spec = PreprocessedData(config.data_dir).spec
  result = {"model": config.model.name, "seed": config.seed}
  result.update(evaluate_and_report(evaluate.model_predictor(model, spec),
                                    config.data_dir, config.model))
  if generator_summary is not None:
    result["generator"] = {k: generator_summary[k] for k in ("rows", "ctr", "oracle_auc")}
  # Predictions of the trained model, taken before export (which merges APG factors).
  rows = data.first_records(config.data_dir, EVAL, VERIFY_ROWS)
  expected = {k: v.numpy() for k, v in
              evaluate.model_predictor(model, spec)(tf.constant(rows)).items()}
  export_dir = export.export(model, spec, os.path.join(out, "export"),
                             data.first_records(config.data_dir, EVAL, WARMUP_ROWS))
  result["export_dir"] = export_dir
  print(export.describe(export_dir))
  export.prune_versions(os.path.dirname(export_dir), keep_export_versions)
  write_json_atomic(os.path.join(out, "metrics.json"), result)
  print(f"metrics: {os.path.join(out, 'metrics.json')}")
  print(f"SavedModel for TF Serving: {export_dir}")
  if verify_export:
    serving.verify_in_fresh_process(spec, rows, expected, export_dir, out)
  return result
