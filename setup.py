"""HMDN: Hierarchical Multi-Distribution Network for CTR prediction, as a TF pipeline."""
from setuptools import find_packages, setup

# The four folders stay at the top of the repository; installed, they are one namespace,
# `hmdn` (hmdn.features, hmdn.models, ...), so nothing as generic as `models` lands in a
# user's site-packages.
FOLDERS = ("features", "beam_jobs", "models", "pipeline")

setup(
    name="hmdn",
    version="0.1.0",
    description="HMDN CTR models with Beam preprocessing, tf.distribute training and "
                "TF Serving export",
    python_requires=">=3.10",
    packages=["hmdn." + p for p in find_packages(
        include=list(FOLDERS) + [f + ".*" for f in FOLDERS])],
    package_dir={"hmdn." + f: f for f in FOLDERS},
    package_data={"hmdn.features": ["specs/*.yaml"]},
    install_requires=[
        "tensorflow>=2.16,<2.22",
        # tf-keras 2 (legacy Keras): TFRS 0.7.7 and every layer here are tf.keras 2 code.
        "tf-keras>=2.16,<2.22",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-datasets>=4.9",
        "apache-beam[tfrecord]>=2.60",
        "google-crc32c>=1.5",  # TFRecord CRCs in C (Beam warns and is slow without it)
        "tensorboard>=2.16",  # TF >= 2.20 no longer pulls it in; Keras logs need it.
        # TF Serving's own protos for the warm-up file (assets.extra/...warmup_requests).
        "tensorflow-serving-api>=2.16,<2.22",
        "absl-py>=2.0",
        "PyYAML>=6.0",
        # `hmdn compare` draws its report's plots (paired deltas, deciles, code heat maps).
        "matplotlib>=3.7",
    ],
    # hypothesis: property-based tests of the readers and the serving parser (any input
    # is written once or rejected with a reason) find cases hand-written tests miss.
    # pytest-xdist: the suite runs its files on every core (`make test` uses 2); alone it
    # keeps one core busy, its tests being mostly single-threaded tracing and Beam.
    extras_require={"test": ["pytest>=7", "hypothesis>=6.100", "pytest-xdist>=3.5"]},
    entry_points={"console_scripts": ["hmdn=hmdn.pipeline.cli:run_main"]},
)
