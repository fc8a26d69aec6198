"""Beam jobs: raw logs -> validated tf.Example TFRecords, vocabularies and statistics."""
import logging

# Lines Beam logs on the ROOT logger when it is imported (so no logger level can
# silence them): dropped at their source unless absl's --verbosity asks for INFO.
_IMPORT_NOISE = ("apitools not found, and bigquery client libraries",
                 "Couldn't find python-snappy or google-crc32c")


class _ImportNoiseFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = str(record.msg)
    except Exception:  # noqa: BLE001 (a filter must never raise)
      return True
    if not any(n in message for n in _IMPORT_NOISE):
      return True
    try:
      from absl import logging as absl_logging
      return absl_logging.get_verbosity() >= absl_logging.INFO
    except ImportError:
      return False


if not any(isinstance(f, _ImportNoiseFilter) for f in logging.getLogger().filters):
  logging.getLogger().addFilter(_ImportNoiseFilter())
