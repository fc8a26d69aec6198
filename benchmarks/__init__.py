"""Benchmarks of the HMDN project: measurements printed as tables and written as JSON.

They are not tests: nothing here asserts on speed. Run them with `make bench`, or one at
a time with `python -m benchmarks.models_bench` / `python -m benchmarks.pipeline_bench`.
"""
import hmdn.features  # noqa: F401  (selects legacy Keras before TensorFlow loads)
