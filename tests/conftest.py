"""pytest glue: parsed absl flags, and a private TFDS data dir.

Tests prepare fake datasets; they must never land in the user's
``~/tensorflow_datasets`` (or ``$TFDS_DATA_DIR``), where a later real run
would find them. Every test process (and the experiment subprocesses it
starts, which inherit the environment) uses its own temporary folder instead.
"""

import os
import shutil
import tempfile

from absl import flags

_TFDS_DIR = None


def pytest_configure(config):
  del config
  global _TFDS_DIR
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  _TFDS_DIR = tempfile.mkdtemp(prefix="distill_jax_tests_tfds_")
  os.environ["TFDS_DATA_DIR"] = _TFDS_DIR


def pytest_unconfigure(config):
  del config
  if _TFDS_DIR:
    shutil.rmtree(_TFDS_DIR, ignore_errors=True)
