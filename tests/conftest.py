"""pytest glue: parsed absl flags, a private TFDS data dir, fast compiles.

Tests prepare fake datasets; they must never land in the user's
``~/tensorflow_datasets`` (or ``$TFDS_DATA_DIR``), where a later real run
would find them. Every test process (and the experiment subprocesses it
starts, which inherit the environment) uses its own temporary folder instead.
"""

import os
import shutil
import tempfile

from absl import flags
import pytest

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


# Modules whose assertions are about the optimised XLA program itself (HLO
# form, buffer sizes); everything else (benchmarks_test's FLOP counts are
# compared with each other, not with fixed figures) compiles
# with `jax_disable_most_optimizations`, as the experiment subprocesses of
# the smoke tests do: the tests' tiny programs spend far longer in XLA's
# optimisation passes than in running (a two-block Boost-DD run: 54 s -> 36 s).
OPTIMIZED_XLA_MODULES = frozenset({"layers_test", "xla_options_test"})


@pytest.fixture(autouse=True)
def _xla_optimization(request):
  import jax  # pylint: disable=g-import-not-at-top
  module = request.module.__name__.rsplit(".", 1)[-1]
  jax.config.update("jax_disable_most_optimizations",
                    module not in OPTIMIZED_XLA_MODULES)
  yield
