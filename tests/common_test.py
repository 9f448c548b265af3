"""experiments.common: flags, presets and user-facing errors."""

import dataclasses
import importlib
import io
import sys

from absl import flags
from absl.testing import absltest
import jax

from distill_jax import config as config_lib
from distill_jax.methods import rat_bptt
from experiments import common
from experiments import flag_help
from experiments import presets

# Every entry point with config flags, and its config class.
ENTRY_POINTS = {
    "dd_fashion_mnist": config_lib.DistillConfig,
    "dd_mnist_fixed": config_lib.DistillConfig,
    "dd_mnist_random": config_lib.DistillConfig,
    "dd_cifar10": config_lib.DistillConfig,
    "rat_bptt_fashion": rat_bptt.RatConfig,
    "rat_bptt_mnist": rat_bptt.RatConfig,
    "rat_bptt_cifar": rat_bptt.RatConfig,
    "boost_dd": rat_bptt.RatConfig,
    "intercorrelation": rat_bptt.RatConfig,
    "rat_compare": rat_bptt.RatConfig,
    "pretrain": common.pretrain.PretrainConfig,
    "adaptation": common.configs.AdaptConfig,
    "cross_arch": common.configs.CrossArchConfig,
    "linear_regression": common.configs.LinRegConfig,
    "poisoning": common.configs.PoisonConfig,
    "sensitivity": common.configs.SensitivityConfig,
    "table1": common.configs.Table1Config,
    "decoupled": common.decoupled_config.DecoupledConfig,
    "adapt_alexnet": common.adapt.AdaptAlexNetConfig,
}


def _fields(cls, base=None):
  """(flag name, help key class, field name, default) of every flag."""
  base = cls() if base is None else base
  for name, owner, f, default, _ in common.flag_fields(cls, base):
    yield name, owner, f.name, default


def _lookup(table, name, owner, field):
  if name != field:  # a stage field, keyed by its flag name.
    return table.get(name)
  return flag_help.lookup(table, owner.__name__, field)


def _flags(module: str, *argv: str) -> tuple[flags.FlagValues, object]:
  """A fresh FlagValues with `module`'s flags, parsed from `argv`."""
  mod = importlib.import_module(f"experiments.{module}")
  fv = flags.FlagValues()
  common.define_flags(mod.PRESETS, ENTRY_POINTS[module], fv)
  fv(["prog", "--workdir=/tmp/run", *argv])
  return fv, mod.PRESETS


def _stderr_of(fn) -> tuple[int, str]:
  err = io.StringIO()
  old, sys.stderr = sys.stderr, err
  try:
    with absltest.TestCase().assertRaises(SystemExit) as cm:
      fn()
  finally:
    sys.stderr = old
  return cm.exception.code, err.getvalue()


class FlagHelpTest(absltest.TestCase):

  def test_every_config_field_has_help(self):
    self.assertCountEqual(set(ENTRY_POINTS.values()), common.CONFIG_CLASSES)
    for cls in common.CONFIG_CLASSES:
      for name, owner, field, _ in _fields(cls):
        text = _lookup(flag_help.HELP, name, owner, field)
        self.assertTrue(text, f"{cls.__name__} --{name}")
        self.assertNotIn("Config.", text)

  def test_help_keys_and_choices_name_real_fields(self):
    names = {name for c in common.CONFIG_CLASSES for name, *_ in _fields(c)}
    classes = {c.__name__: c for c in common.CONFIG_CLASSES}
    for key in [*flag_help.HELP, *flag_help.CHOICES]:
      cls, _, field = key.rpartition(".")
      if cls:
        self.assertIn(field, {f.name for f in dataclasses.fields(
            classes[cls])}, key)
      else:
        self.assertIn(field, names, key)

  def test_flags_have_meanings_and_choice_fields_are_enums(self):
    for module, cls in ENTRY_POINTS.items():
      fv, table = _flags(module)
      base = table()
      for name, owner, field, want in _fields(cls, base):
        flag, where = fv[name], f"{module} --{name}"
        choices = _lookup(flag_help.CHOICES, name, owner, field)
        meaning = _lookup(flag_help.HELP, name, owner, field)
        self.assertEqual(flag.help, f"<{'|'.join(choices)}>: {meaning}"
                         if choices else meaning, where)
        if choices:
          self.assertEqual(flag.parser.enum_values, list(choices), where)
        got = (tuple(int(v) for v in flag.value)
               if isinstance(want, tuple) else flag.value)
        self.assertEqual(got, want, where)
      self.assertIn(table.default, fv["preset"].help)

  def test_rat_choice_fields(self):
    fv, _ = _flags("rat_bptt_fashion")
    for name in ("arch", "init", "norm", "pooling", "remat", "image_init",
                 "inner_opt", "truncation", "boost_mode"):
      self.assertTrue(fv[name].parser.enum_values, name)
    self.assertEqual(fv["image_init"].parser.enum_values,
                     list(rat_bptt.IMAGE_INITS))


class FlagErrorsTest(absltest.TestCase):

  def test_bad_values_fail_while_parsing(self):
    for module, arg in (("rat_bptt_fashion", "--truncation=cyclic"),
                        ("rat_bptt_fashion", "--syn_aug=flip_blur"),
                        ("rat_bptt_fashion", "--eval_budgets=300,x"),
                        ("dd_mnist_random", "--arch=vgg"),
                        ("dd_mnist_random", "--steps=two"),
                        ("pretrain", "--init=normal")):
      with self.assertRaises(flags.IllegalFlagValueError, msg=arg):
        _flags(module, arg)
    fv, _ = _flags("rat_bptt_fashion", "--syn_aug=rotate_flip",
                   "--real_aug=none", "--eval_budgets=3,6")
    self.assertEqual(fv.eval_budgets, ["3", "6"])

  def test_bad_config_is_one_line(self):
    fv, table = _flags("rat_bptt_fashion", "--preset=smoke", "--window=0",
                       "--total_steps=20")
    code, err = _stderr_of(lambda: common.config_from_flags(
        table, rat_bptt.RatConfig, fv))
    self.assertEqual(code, 2)
    self.assertEqual(err.count("\n"), 1)
    self.assertTrue(err.startswith("error: window=0 must be in [1, "
                                   "total_steps=20]"), err)

  def test_flags_override_the_preset(self):
    fv, table = _flags("rat_bptt_fashion", "--preset=smoke", "--window=3",
                       "--eval_budgets=2,5")
    cfg = common.config_from_flags(table, rat_bptt.RatConfig, fv)
    self.assertEqual(cfg, dataclasses.replace(
        presets.RAT_BPTT_FASHION("smoke"), window=3, eval_budgets=(2, 5)))

  def test_fail_writes_one_line(self):
    code, err = _stderr_of(lambda: common.fail("two\nlines"))
    self.assertEqual((code, err), (2, "error: two lines\n"))


class PresetsTest(absltest.TestCase):

  def test_unknown_preset_names_the_choices(self):
    with self.assertRaisesRegex(ValueError, r"'nope'.*\['default', 'quick'"):
      presets.DD_FASHION_MNIST("nope")

  def test_default_and_purposes(self):
    self.assertEqual(presets.RAT_BPTT_CIFAR(),
                     presets.RAT_BPTT_CIFAR("c10_ipc10"))
    for table in vars(presets).values():
      if isinstance(table, presets.Presets):
        self.assertIn("smoke", table.names)
        for name in table.names:
          self.assertTrue(table.purpose(name), name)
          cfg = table(name)
          if table not in (presets.CROSS_ARCH, presets.TABLE1):
            cfg.validate()  # Those two need input paths first.

  def test_quick_runs_a_fixed_number_of_steps(self):
    cfg = presets.DD_FASHION_MNIST("quick")
    self.assertEqual((cfg.outer_steps, cfg.time_budget_s, cfg.eval_inits),
                     (1000, 0.0, 50))

  def test_entry_points_use_the_tables(self):
    for module in ENTRY_POINTS:
      mod = importlib.import_module(f"experiments.{module}")
      self.assertIsInstance(mod.PRESETS, presets.Presets, module)
      self.assertIs(mod.preset, mod.PRESETS, module)


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
