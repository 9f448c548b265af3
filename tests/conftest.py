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
_OWN_CACHE = None
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  del config
  global _TFDS_DIR, _OWN_CACHE
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  _TFDS_DIR = tempfile.mkdtemp(prefix="distill_jax_tests_tfds_")
  os.environ["TFDS_DATA_DIR"] = _TFDS_DIR
  # One persistent XLA compilation cache for the run: the pytest process,
  # its xdist workers and the experiment subprocesses they start (all
  # inherit the environment) compile each program once. Many smoke runs
  # share programs (a second `--preset=smoke` DELT run: 40 s -> 16 s); the
  # cache changes compile time only, never the executables or results.
  if _CACHE_ENV not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="distill_jax_tests_xla_cache_")
    os.environ[_CACHE_ENV] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_unconfigure(config):
  del config
  for path in (_TFDS_DIR, _OWN_CACHE):
    if path:
      shutil.rmtree(path, ignore_errors=True)


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
