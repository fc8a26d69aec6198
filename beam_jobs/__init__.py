"""Beam jobs: raw logs -> validated tf.Example TFRecords, vocabularies and statistics."""
