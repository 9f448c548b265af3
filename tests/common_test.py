"""experiments.common: user-facing errors instead of tracebacks."""

import io
import sys

from absl.testing import absltest
import jax

from experiments import common


class RunAndReportTest(absltest.TestCase):

  def _run(self, exc):
    def run_fn(cfg, workdir):
      del cfg, workdir
      raise exc
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
      with self.assertRaises(SystemExit) as cm:
        common.run_and_report(run_fn, None, "/tmp/unused")
    finally:
      sys.stderr = old
    return cm.exception.code, err.getvalue()

  def test_out_of_memory_names_the_flags(self):
    code, msg = self._run(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory allocating 65536000304 bytes."))
    self.assertEqual(code, 3)
    self.assertIn("out of device memory", msg)
    self.assertIn("--eval_batch", msg)
    self.assertIn("--resume", msg)

  def test_value_error_is_a_message(self):
    code, msg = self._run(ValueError("bad flag: use --x"))
    self.assertEqual(code, 2)
    self.assertIn("error: bad flag: use --x", msg)

  def test_other_runtime_errors_propagate(self):
    def run_fn(cfg, workdir):
      del cfg, workdir
      raise jax.errors.JaxRuntimeError("INTERNAL: something else")
    with self.assertRaises(jax.errors.JaxRuntimeError):
      common.run_and_report(run_fn, None, "/tmp/unused")


if __name__ == "__main__":
  absltest.main()
