"""XLA compile options: same results, options applied on CPU, no recompiles."""

import platform
import subprocess
import sys

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.nn import layers
from distill_jax.platform import xla_options


def _conv_loss(w, x):
  y = layers.conv2d(x, w, padding="SAME")
  return jnp.sum(jnp.tanh(y) ** 2)


class XlaOptionsTest(absltest.TestCase):

  def test_options_by_backend(self):
    self.assertEqual(xla_options.options("cpu"),
                     dict(xla_options.CPU_OPTIONS))
    self.assertEqual(xla_options.options("gpu"), {})
    self.assertEqual(xla_options.options("tpu"), {})

  def test_cpu_options_are_read_only(self):
    with self.assertRaises(TypeError):
      xla_options.CPU_OPTIONS["xla_cpu_use_fusion_emitters"] = True

  def test_unknown_options_are_left_out(self):
    # pylint: disable=protected-access
    self.assertFalse(xla_options._accepted(
        "xla_cpu_not_a_flag_of_this_jaxlib", True))
    self.assertTrue(xla_options._accepted("xla_cpu_use_fusion_emitters",
                                          False))

  def test_no_ynnpack_convolutions(self):
    """The measured configuration is in effect on this jaxlib: convolutions
    stay XLA's, not YNNPACK fusions (4x slower kernel gradients)."""
    if jax.default_backend() != "cpu":
      self.skipTest("CPU options")
    self.assertIn("xla_cpu_experimental_ynn_fusion_type",
                  xla_options.options("cpu"))
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 32))
    w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))

    def ynn_convs(jitted):
      hlo = jitted.lower(w, x).compile().as_text()
      comps, name = {}, None
      for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
          name = line.split()[0].lstrip("%")
          comps[name] = ""
        elif name:
          comps[name] += line + "\n"
      return [c for c, body in comps.items() if "convolution(" in body and
              f"calls=%{c}," in hlo and "ynn" in hlo.split(f"calls=%{c},")[0]
              .rsplit("\n", 1)[-1]]

    grad = jax.grad(_conv_loss)
    self.assertEqual(ynn_convs(xla_options.jit(grad)), [])
    self.assertNotEqual(ynn_convs(jax.jit(grad)), [])  # XLA's default does.

  def test_jit_matches_default_compilation(self):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (4, 8, 8, 3))
    w = jax.random.normal(kw, (3, 3, 3, 5))
    grad = jax.grad(_conv_loss)
    want = jax.jit(grad)(w, x)
    got = xla_options.jit(grad)(w, x)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    chex.assert_tree_all_finite(got)

  def test_compiler_options_reach_xla(self):
    if jax.default_backend() != "cpu":
      self.skipTest("CPU options")
    # An option XLA rejects proves the dict is passed to the compiler.
    f = xla_options.jit(jnp.sin, compiler_options={"not_an_xla_option": 1})
    with self.assertRaises(Exception):
      f(jnp.ones(3))

  def test_lazy_jit_and_precompile(self):
    calls = []

    @xla_options.lazy_jit(static_argnames=("n",))
    def f(x, n):
      calls.append(1)  # runs once per trace.
      return x * n

    x = jnp.arange(4.0)
    xla_options.precompile(f, x, n=3)
    np.testing.assert_allclose(f(x, n=3), 3 * np.arange(4.0))
    np.testing.assert_allclose(f(x + 1, n=3), 3 * np.arange(1.0, 5.0))
    self.assertEqual(f._cache_size(), 1)  # pylint: disable=protected-access
    self.assertEqual(f.__name__, "f")
    xla_options.release_host_memory()  # no error where glibc is absent.

  def test_release_compiled_drops_programs(self):
    traces = []

    @jax.jit
    def f(x):
      traces.append(1)
      return x + 1

    x = jnp.arange(3.0)
    f(x)
    self.assertEqual(f._cache_size(), 1)  # pylint: disable=protected-access
    xla_options.release_compiled()
    self.assertEqual(f._cache_size(), 0)  # pylint: disable=protected-access
    np.testing.assert_allclose(f(x), np.arange(1.0, 4.0))  # recompiles.
    self.assertLen(traces, 2)

  def test_limit_malloc_arenas(self):
    # In a child process: the cap is process-wide.
    code = ("from distill_jax.platform import xla_options as x; "
            "print(x.limit_malloc_arenas(0), x.limit_malloc_arenas(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    self.assertEqual(out[0], "False")
    self.assertEqual(out[1], "True" if platform.libc_ver()[0] == "glibc"
                     else out[1])

  def test_keep_malloc_mapped(self):
    # In a child process: the setting is process-wide.
    code = ("from distill_jax.platform import xla_options as x; "
            "print(x.keep_malloc_mapped())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    if platform.libc_ver()[0] == "glibc":
      self.assertEqual(out, ["True"])


if __name__ == "__main__":
  absltest.main()
