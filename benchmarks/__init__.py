"""Benchmarks of the HMDN project: measurements printed as tables and written as JSON.

They are not tests: nothing here asserts on speed. `make bench` runs the models,
pipeline, Beam and optimizer benchmarks; each (and `history_bench`, `task_bench`,
`task_evidence`, `movielens_headroom`, which need data or runs of their own) runs alone
with `python -m benchmarks.<name>`.
"""
import hmdn.features  # noqa: F401  (selects legacy Keras before TensorFlow loads)
