"""Composable Beam transforms of the preprocessing job, one family a module.

Parsing (beam_jobs/sources/) returns tagged outputs, so a bad row is data (the dead
letter), not an exception. Records travel in batches, (split, {field: column})
(`batches`): the derived features (`derived`), the combiners (`vocabularies`,
`statistics`) and the tf.Example coder (`examples`) work a column at a time, and the
TFRecord sink (`tfrecord_sink`) writes a batch with one call; only the join of a
count_bucket, mode or share table goes row by row. Every transform takes the
`FeatureSpec` explicitly; DoFns hold no global state. Output paths come from
`features.preprocessed.PreprocessedData`.
"""
