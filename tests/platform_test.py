"""distill_jax.platform: explicit options, no environment, no hidden state."""

import os
import subprocess
import sys

from absl import flags
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import platform
from distill_jax.methods import rat_bptt
from distill_jax.nn import layers
from distill_jax.platform import xla_options
from experiments import common
from experiments import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Environment variables the library does not read: setting them changes
# nothing.
OLD_ENV = {"DISTILL_JAX_CPU_WIDE_CONV": "im2col",
           "DISTILL_JAX_XLA_DEFAULTS": "1",
           "DISTILL_JAX_MALLOC_ARENAS": "lots",
           "DISTILL_JAX_KEEP_MALLOC_MAPPED": "maybe"}


class PlatformTest(absltest.TestCase):

  def test_defaults(self):
    p = platform.Platform()
    self.assertEqual((p.xla_cpu_defaults, p.cpu_wide_conv, p.malloc_arenas,
                      p.keep_malloc_mapped), (False, "xla_vjp", None, None))
    self.assertEqual(platform.current(), p)

  def test_bad_values_are_one_line_errors_naming_the_field(self):
    for kwargs, message in (
        (dict(xla_cpu_defaults=1), "xla_cpu_defaults=1 must be True"),
        (dict(cpu_wide_conv="fast"),
         "cpu_wide_conv='fast' must be one of xla, xla_vjp, im2col, "
         "im2col_t, shift."),
        (dict(malloc_arenas=-1), "malloc_arenas=-1 must be None"),
        (dict(malloc_arenas="2"), "malloc_arenas='2' must be None"),
        (dict(malloc_arenas=True), "malloc_arenas=True must be None"),
        (dict(keep_malloc_mapped="yes"),
         "keep_malloc_mapped='yes' must be None (entry point default), True "
         "or False.")):
      with self.subTest(kwargs):
        with self.assertRaises(ValueError) as cm:
          platform.Platform(**kwargs)
        self.assertIn(message, str(cm.exception))
        self.assertNotIn("\n", str(cm.exception))

  def test_configure_needs_a_platform(self):
    with self.assertRaisesRegex(TypeError, "Platform"):
      platform.configure({"cpu_wide_conv": "im2col"})

  def test_configure_sets_the_options_and_default_restores_them(self):
    default_options = xla_options.options("cpu")
    self.assertEqual(default_options, dict(xla_options.CPU_OPTIONS))
    self.assertEqual(layers.auto_conv_impl(64, "cpu"), "xla_vjp")
    previous = platform.configure(platform.Platform(
        xla_cpu_defaults=True, cpu_wide_conv="im2col"))
    try:
      self.assertEqual(previous, platform.Platform())
      self.assertEqual(xla_options.options("cpu"), {})
      self.assertEqual(layers.auto_conv_impl(64, "cpu"), "im2col")
      self.assertEqual(layers.auto_conv_impl(1, "cpu"), "im2col_t")
      self.assertEqual(layers.auto_conv_impl(64, "gpu"), "xla")
    finally:
      platform.configure(previous)
    self.assertEqual(platform.current(), platform.Platform())
    self.assertEqual(xla_options.options("cpu"), default_options)
    self.assertEqual(layers.auto_conv_impl(64, "cpu"), "xla_vjp")

  def test_traced_conv_follows_the_configured_platform(self):
    if jax.default_backend() != "cpu":
      self.skipTest("the CPU choice")
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 32))
    w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, 32, 4))

    def loss():  # A new function each time: JAX caches traces by function.
      return lambda w: jnp.sum(jnp.tanh(layers.conv2d(x, w, padding=1)))

    self.assertIn("conv_general_dilated", str(jax.make_jaxpr(loss())(w)))
    previous = platform.configure(platform.Platform(cpu_wide_conv="im2col"))
    try:
      self.assertNotIn("conv_general_dilated",
                       str(jax.make_jaxpr(loss())(w)))
      # im2col supports forward mode, same values as the default.
      im2col_value, tangent = jax.jvp(loss(), (w,), (jnp.ones_like(w),))
    finally:
      platform.configure(previous)
    self.assertTrue(np.isfinite(tangent))
    np.testing.assert_allclose(im2col_value, loss()(w), rtol=1e-4, atol=1e-4)

  def test_old_environment_variables_change_nothing(self):
    code = ("from distill_jax.nn import layers; "
            "from distill_jax.platform import xla_options as x; "
            "from distill_jax import platform as p; "
            "print(layers.auto_conv_impl(64, 'cpu'), "
            "x.options('cpu') == dict(x.CPU_OPTIONS), "
            "p.current() == p.Platform(), hasattr(layers, 'CPU_WIDE_IMPL'), "
            "hasattr(x, 'CPU'))")
    for name, value in [*OLD_ENV.items(),
                        ("DISTILL_JAX_CPU_WIDE_CONV", "not_an_impl")]:
      with self.subTest(name):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
               name: value}
        proc = subprocess.run([sys.executable, "-c", code], env=env,
                              capture_output=True, text=True, check=False)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertEqual(proc.stdout.split(),
                         ["xla_vjp", "True", "True", "False", "False"])

  def test_no_environment_reads(self):
    for folder in ("distill_jax/platform", "distill_jax/nn"):
      for name in os.listdir(os.path.join(ROOT, folder)):
        if name.endswith(".py"):
          with open(os.path.join(ROOT, folder, name)) as f:
            text = f.read()
          self.assertNotIn("environ", text, name)
          self.assertNotIn("getenv", text, name)


class InitGroupTest(absltest.TestCase):

  def test_default_is_groups_of_four(self):
    self.assertEqual(config_lib.DistillConfig().init_group, 4)
    self.assertEqual(rat_bptt.RatConfig().init_group, 4)

  def test_negative_group_is_a_one_line_error(self):
    for cls in (config_lib.DistillConfig, rat_bptt.RatConfig):
      with self.assertRaisesRegex(
          ValueError, r"^init_group=-1 must be 0 \(all\) or a positive "
          r"group size\.$"):
        cls(init_group=-1).validate()

  def test_stored_minus_one_reads_as_the_default(self):
    cfg = config_lib.DistillConfig.from_dict({"init_group": -1})
    self.assertEqual(cfg.init_group, config_lib.DistillConfig().init_group)


class PlatformFlagsTest(absltest.TestCase):

  def _flags(self, *argv):
    fv = flags.FlagValues()
    common.define_flags(presets.DD_MNIST_RANDOM, flag_values=fv)
    fv(["prog", "--workdir=/tmp/run", *argv])
    return fv

  def test_defaults_and_entry_point_defaults(self):
    fv = self._flags()
    self.assertEqual(common.platform_from_flags(fv),
                     platform.Platform(malloc_arenas=0,
                                       keep_malloc_mapped=False))
    self.assertEqual(
        common.platform_from_flags(fv, malloc_arenas=1, keep_mapped=True),
        platform.Platform(malloc_arenas=1, keep_malloc_mapped=True))

  def test_flags_set_the_fields(self):
    fv = self._flags("--xla_cpu_defaults", "--cpu_wide_conv=im2col",
                     "--malloc_arenas=0", "--nokeep_malloc_mapped")
    self.assertEqual(
        common.platform_from_flags(fv, malloc_arenas=1, keep_mapped=True),
        platform.Platform(xla_cpu_defaults=True, cpu_wide_conv="im2col",
                          malloc_arenas=0, keep_malloc_mapped=False))

  def test_bad_values_fail_while_parsing(self):
    for arg in ("--cpu_wide_conv=fast", "--malloc_arenas=-1",
                "--malloc_arenas=lots", "--keep_malloc_mapped=maybe"):
      with self.assertRaises(flags.IllegalFlagValueError, msg=arg):
        self._flags(arg)


if __name__ == "__main__":
  absltest.main()
