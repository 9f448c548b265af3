"""Tests for distill_jax.nn.layers: every impl must match impl="xla"."""

import itertools
import unittest

import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.nn import layers
from tests import test_utils  # pylint: disable=unused-import (debug guards)

jax.config.update("jax_default_matmul_precision", "highest")

FAST_CONV = [i for i in layers.CONV_IMPLS if i != "xla"] + ["auto"]
# "xla_vjp" has a custom reverse-mode rule only (no forward mode).
FORWARD_MODE_CONV = [i for i in FAST_CONV if i not in ("xla_vjp", "auto")]
PADDINGS = [0, 1, 2, "SAME", "VALID", ((1, 0), (2, 1))]
ATOL = 1e-4


def _rand(key, shape, scale=1.0):
  return scale * jax.random.normal(jax.random.PRNGKey(key), shape)


class Conv2dTest(unittest.TestCase):

  def _check(self, x, w, b, padding, impl):
    ref = layers.conv2d(x, w, b, padding=padding, impl="xla")
    out = layers.conv2d(x, w, b, padding=padding, impl=impl)
    chex.assert_equal_shape([out, ref])
    chex.assert_trees_all_close(out, ref, atol=ATOL, rtol=ATOL)

  def test_forward(self):
    for impl, padding, (ci, k) in itertools.product(
        FAST_CONV, PADDINGS, [(1, 3), (3, 5), (2, 2)]):
      with self.subTest(impl=impl, padding=padding, ci=ci, k=k):
        x = _rand(0, (2, 7, 6, ci))
        w = _rand(1, (k, k, ci, 4), 0.3)
        self._check(x, w, _rand(2, (4,)), padding, impl)

  def test_auto_picks_by_backend_and_input_width(self):
    self.assertEqual(layers.auto_conv_impl(1, "cpu"), "im2col_t")
    self.assertEqual(layers.auto_conv_impl(layers.WIDE_INPUT, "cpu"),
                     "xla_vjp")
    self.assertEqual(layers.auto_conv_impl(layers.WIDE_INPUT, "cpu",
                                           wide="im2col"), "im2col")
    for backend in ("gpu", "tpu"):
      self.assertEqual(layers.auto_conv_impl(1, backend), "xla")
      self.assertEqual(layers.auto_conv_impl(64, backend, "im2col"), "xla")

  def test_auto_matches_xla_on_the_wide_path(self):
    x = _rand(0, (2, 5, 5, layers.WIDE_INPUT))
    w = _rand(1, (3, 3, layers.WIDE_INPUT, 4), 0.1)
    self._check(x, w, None, 1, "auto")  # the wide path, against XLA

  def test_non_square_kernel_no_bias(self):
    for impl in FAST_CONV:
      x = _rand(0, (2, 6, 7, 2))
      w = _rand(1, (3, 2, 2, 3))
      self._check(x, w, None, "SAME", impl)

  def test_grads(self):
    x = _rand(0, (2, 6, 6, 2))
    w = _rand(1, (3, 3, 2, 3), 0.3)
    b = _rand(2, (3,))

    def loss(x, w, b, impl):
      return jnp.sum(jnp.tanh(layers.conv2d(x, w, b, padding=1, impl=impl)))

    ref = jax.grad(loss, argnums=(0, 1, 2))(x, w, b, "xla")
    for impl in FAST_CONV:
      with self.subTest(impl=impl):
        out = jax.jit(jax.grad(loss, argnums=(0, 1, 2)),
                      static_argnums=3)(x, w, b, impl)
        chex.assert_trees_all_close(out, ref, atol=ATOL, rtol=ATOL)

  def test_grad_of_grad(self):
    """Reverse-over-reverse, as in the distillation meta-gradient."""
    x = _rand(0, (2, 6, 6, 1))
    w = _rand(1, (3, 3, 1, 2), 0.3)

    def inner(x, w, impl):
      g = jax.grad(lambda w: jnp.sum(
          jnp.tanh(layers.conv2d(x, w, padding="SAME", impl=impl)) ** 2))(w)
      return jnp.sum((w - 0.1 * g) ** 2)

    ref = jax.grad(inner, argnums=(0, 1))(x, w, "xla")
    for impl in FAST_CONV:
      with self.subTest(impl=impl):
        out = jax.grad(inner, argnums=(0, 1))(x, w, impl)
        chex.assert_trees_all_close(out, ref, atol=ATOL, rtol=ATOL)

  def test_forward_over_reverse(self):
    x = _rand(0, (2, 5, 5, 2))
    w = _rand(1, (3, 3, 2, 2), 0.3)
    v = _rand(2, w.shape)

    def hvp(w, impl):
      f = lambda w: jnp.sum(jnp.tanh(layers.conv2d(x, w, impl=impl)) ** 2)
      return jax.jvp(jax.grad(f), (w,), (v,))[1]

    ref = hvp(w, "xla")
    for impl in FORWARD_MODE_CONV:
      with self.subTest(impl=impl):
        chex.assert_trees_all_close(hvp(w, impl), ref, atol=ATOL, rtol=ATOL)

  def test_xla_vjp_third_order(self):
    """Reverse^3 through the closed F / B_x / B_w rules, odd paddings too."""
    cases = [(1, (3, 3)), ("VALID", (3, 3)), (((1, 0), (2, 1)), (3, 2)),
             (2, (2, 2)), ("SAME", (2, 3))]  # (2, (2, 2)): pad > k - 1.
    for padding, (kh, kw) in cases:
      with self.subTest(padding=padding, k=(kh, kw)):
        x = _rand(0, (2, 6, 5, 3))
        w = _rand(1, (kh, kw, 3, 4), 0.3)

        def f(x, w, impl, padding=padding):
          def inner(w):
            return jnp.sum(jnp.tanh(layers.conv2d(
                x, w, padding=padding, impl=impl)) ** 2)
          g = jax.grad(inner)(w)
          return jnp.sum(jnp.sin(w - 0.1 * g)) + jnp.sum(g * g)

        def third(x, w, impl):
          return jax.grad(lambda x, w: jnp.sum(jnp.cos(
              jax.grad(f, argnums=(0, 1))(x, w, impl)[0])),
                          argnums=(0, 1))(x, w)

        chex.assert_trees_all_close(
            jax.grad(f, argnums=(0, 1))(x, w, "xla_vjp"),
            jax.grad(f, argnums=(0, 1))(x, w, "xla"), atol=ATOL, rtol=ATOL)
        chex.assert_trees_all_close(third(x, w, "xla_vjp"),
                                    third(x, w, "xla"), atol=1e-3, rtol=1e-3)

  def test_xla_vjp_vmapped_weights(self):
    """vmap over per-initialisation kernels, as rat_bptt does."""
    x = _rand(0, (3, 2, 5, 5, 4))
    w = _rand(1, (3, 3, 3, 4, 4), 0.3)

    def meta(x, w, impl):
      g = jax.grad(lambda w: jnp.sum(jnp.tanh(
          layers.conv2d(x, w, padding=1, impl=impl))))(w)
      return jnp.sum((w - 0.5 * g) ** 2)

    out = jax.vmap(jax.grad(meta, argnums=(0, 1)),
                   in_axes=(0, 0, None))(x, w, "xla_vjp")
    for i in range(3):
      ref = jax.grad(meta, argnums=(0, 1))(x[i], w[i], "xla")
      chex.assert_trees_all_close((out[0][i], out[1][i]), ref,
                                  atol=ATOL, rtol=ATOL)

  def test_xla_vjp_meta_gradient_in_loop_is_canonical(self):
    """Inside a loop every convolution is in the forward form XLA:CPU runs fast.

    JAX's own transpose rules give the kernel gradient dim_labels
    f01b_i01o->01bf, which XLA:CPU leaves uncanonicalised inside a `while`
    body and runs ~100x slower; the custom rules must never emit it.
    """
    if jax.default_backend() != "cpu":
      self.skipTest("XLA:CPU lowering property")
    x = _rand(0, (4, 6, 6, 8))
    w0 = _rand(1, (3, 3, 8, 8), 0.2)

    def unrolled(x, w0, impl):
      def step(w, _):
        g = jax.grad(lambda w: jnp.sum(jnp.tanh(
            layers.conv2d(x, w, padding=1, impl=impl)) ** 2))(w)
        return w - 0.1 * g, None
      w, _ = jax.lax.scan(jax.checkpoint(step), w0, None, length=3)
      return jnp.sum(jnp.tanh(layers.conv2d(x, w, padding=1, impl=impl)))

    def labels(impl):
      hlo = jax.jit(jax.grad(unrolled), static_argnums=2).lower(
          x, w0, impl).compile().as_text()
      return {line.split("dim_labels=")[1].split(",")[0]
              for line in hlo.splitlines() if " convolution(" in line}

    self.assertIn("f01b_i01o->01bf", labels("xla"))  # the slow form exists,
    self.assertEqual(labels("xla_vjp"), {"b01f_01io->b01f"})  # and is gone.
    # Values in float64: the three unrolled steps amplify float32 rounding
    # differently per CPU (AVX2 vs AVX-512 kernels: up to 4e-2 on gradients
    # of size ~200), which would hide or fake a real difference.
    with jax.enable_x64(True):
      x64, w64 = (np.asarray(a, np.float64) for a in (x, w0))
      got = jax.grad(unrolled)(x64, w64, "xla_vjp")
      want = jax.grad(unrolled)(x64, w64, "xla")
      self.assertEqual(got.dtype, np.float64)
      chex.assert_trees_all_close(got, want, atol=1e-9, rtol=1e-9)

  def test_xla_vjp_has_no_forward_mode(self):
    x, w = _rand(0, (1, 4, 4, 2)), _rand(1, (3, 3, 2, 2))
    with self.assertRaisesRegex(TypeError, "custom_vjp"):
      jax.jvp(lambda w: layers.conv2d(x, w, impl="xla_vjp"), (w,), (w,))

  def test_bad_impl(self):
    with self.assertRaises(ValueError):
      layers.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)),
                    impl="nope")


class PoolTest(unittest.TestCase):

  def test_max_pool_values_and_grads(self):
    # Random normals: no ties, so the gradients are unambiguous.
    x = _rand(0, (2, 8, 6, 3))
    f = lambda x, impl: jnp.sum(jnp.sin(layers.max_pool(x, 2, impl=impl)))
    for impl in ("auto", "reshape"):
      with self.subTest(impl=impl):
        chex.assert_trees_all_close(
            layers.max_pool(x, 2, impl=impl), layers.max_pool(x, 2, impl="xla"))
        chex.assert_trees_all_close(jax.grad(f)(x, impl),
                                    jax.grad(f)(x, "xla"))
        hess = lambda x, i: jax.grad(lambda x: jnp.sum(jax.grad(f)(x, i) ** 2))
        chex.assert_trees_all_close(hess(x, impl)(x), hess(x, "xla")(x),
                                    atol=ATOL)

  def test_max_pool_odd_size_crops(self):
    x = _rand(0, (1, 7, 5, 2))
    chex.assert_trees_all_close(layers.max_pool(x, 2, impl="reshape"),
                                layers.max_pool(x, 2, impl="xla"))

  def test_overlapping_window_falls_back(self):
    x = _rand(0, (2, 9, 9, 3))
    out = layers.max_pool(x, 3, 2, impl="reshape")
    chex.assert_shape(out, (2, 4, 4, 3))
    chex.assert_trees_all_close(out, layers.max_pool(x, 3, 2, impl="xla"))

  def test_avg_pool(self):
    x = _rand(0, (2, 6, 6, 3))
    f = lambda x, impl: jnp.sum(jnp.sin(layers.avg_pool(x, 2, impl=impl)))
    chex.assert_trees_all_close(layers.avg_pool(x, 2),
                                layers.avg_pool(x, 2, impl="xla"), atol=1e-6)
    chex.assert_trees_all_close(jax.grad(f)(x, "auto"), jax.grad(f)(x, "xla"),
                                atol=1e-6)
    ref = np.asarray(x).reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    chex.assert_trees_all_close(layers.avg_pool(x, 2), ref, atol=1e-6)
    chex.assert_shape(layers.avg_pool(x, 3, 2), (2, 2, 2, 3))


if __name__ == "__main__":
  unittest.main()
