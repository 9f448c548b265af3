"""Shared plumbing of the absl entry points in `experiments/`.

Every field of the experiment's config class becomes a flag of the same
name whose default is the preset's value, so `--help` shows the real
defaults and a flag given on the command line always wins. Help texts say
what each field means (`experiments.flag_help`); choice fields are enum
flags. Extra flags: --workdir, --data_dir, --resume, --progress, --preset
(presets: `experiments.presets`) and the platform options
--xla_cpu_defaults, --cpu_wide_conv, --malloc_arenas, --keep_malloc_mapped
(`distill_jax.platform.Platform`, configured once before the run starts)
and the multi-host flags --coordinator_address, --num_processes,
--process_id (`distill_jax.platform.distributed.initialize`, called before
any JAX computation). The library itself never reads flags.

Bad flags and bad configs stop the program with one line `error: ...` on
stderr and exit status 2 (`fail`): `run` parses flags with `parse_flags`,
and `config_from_flags` / `check_args` report through `fail` instead of
raising `app.UsageError` (which makes absl print the module docstring).
"""

import dataclasses
import json
import os
import re
import sys
import typing
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging

from distill_jax import config as config_lib
from distill_jax import platform
from distill_jax.data import augment
from distill_jax.methods import adapt
from distill_jax.methods import rat_bptt
from distill_jax.methods.decoupled import config as decoupled_config
from distill_jax.nn import layers
from distill_jax.run import train_pool as pretrain
from experiments import configs
from experiments import flag_help

FLAGS = flags.FLAGS

# Every config class an entry point turns into flags.
CONFIG_CLASSES = (config_lib.DistillConfig, rat_bptt.RatConfig,
                  pretrain.PretrainConfig, configs.AdaptConfig,
                  configs.CrossArchConfig, configs.LinRegConfig,
                  configs.PoisonConfig, configs.SensitivityConfig,
                  configs.Table1Config, decoupled_config.DecoupledConfig,
                  adapt.AdaptAlexNetConfig)


def fail(message: str) -> NoReturn:
  """Writes `error: <message>` as one line on stderr and exits with 2."""
  one_line = " ".join(str(message).split())
  sys.stderr.write(f"error: {one_line}\n")
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with its errors as one `error:` line (exit 2)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    missing = re.search(r"Flag --(\w+) must have a value other than None",
                        message)
    if missing:
      message = (f"--{missing.group(1)} is required, e.g. "
                 f"--{missing.group(1)}=/tmp/run")
    elif message.startswith("flag --"):
      message = message[len("flag "):]
      message = re.sub(r": invalid literal for int\(\) .*", ": must be an "
                       "integer", message)
      message = re.sub(r": could not convert string to float.*", ": must be a "
                       "number", message)
    fail(f"{message} (see --help)")


def run(main) -> None:
  """`app.run(main)` with one-line flag errors (`parse_flags`).

  The flags defined here become key flags of the main module, so `--help`
  lists them (absl lists only the main module's own flags).
  """
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)


def check_args(argv: list[str]) -> None:
  """Fails on positional arguments (every input is a --flag)."""
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}: every setting is a --flag, e.g. "
         "--workdir=/tmp/run (see --help).")


def check_workdir(path: str) -> None:
  """Fails when --workdir exists but is not a directory."""
  if os.path.exists(path) and not os.path.isdir(path):
    fail(f"--workdir={path} is a file, not a directory; pass a new or "
         "existing directory.")


def _is_int_list(values) -> bool:
  try:
    [int(v) for v in values]  # pylint: disable=expression-not-assigned
  except (TypeError, ValueError):
    return False
  return True


def define_int_list(name: str, default, help_: str,
                    flag_values=FLAGS) -> None:
  """A comma-separated list flag of integers, checked when flags parse."""
  flags.DEFINE_list(name, [str(v) for v in default], help_,
                    flag_values=flag_values)
  flags.register_validator(
      name, _is_int_list, "must be comma-separated integers, e.g. "
      f"{','.join(str(v) for v in default) or '1,2'}", flag_values)


def define_choice_list(name: str, default, choices, help_: str,
                       flag_values=FLAGS) -> None:
  """A comma-separated list flag of values from `choices`, non-empty."""
  flags.DEFINE_list(name, list(default), f"{help_}: one or more of "
                    f"{','.join(choices)}", flag_values=flag_values)
  flags.register_validator(
      name, lambda v: bool(v) and set(v) <= set(choices),
      f"must be one or more of {','.join(choices)}", flag_values)


def _define_field(cls, f, default, hint, flag_values, name=None) -> None:
  """One flag for config field `f` of `cls` with default `default`; `name`
  (default `f.name`) is the flag's name (prefixed for nested stages)."""
  name = name or f.name
  cls_name = cls.__name__
  help_ = (flag_help.lookup(flag_help.HELP, cls_name, f.name) if name ==
           f.name else flag_help.HELP.get(name))
  if not help_:
    raise KeyError(f"{cls_name}.{f.name} (--{name}) has no help text in "
                   "experiments/flag_help.py HELP; add one.")
  choices = (flag_help.lookup(flag_help.CHOICES, cls_name, f.name) if name ==
             f.name else flag_help.CHOICES.get(name))
  kw = dict(flag_values=flag_values)
  if choices:
    flags.DEFINE_enum(name, default, list(choices), help_, **kw)
  elif hint is bool:
    flags.DEFINE_bool(name, default, help_, **kw)
  elif hint is int:
    flags.DEFINE_integer(name, default, help_, **kw)
  elif hint is float:
    flags.DEFINE_float(name, default, help_, **kw)
  elif hint is str:
    flags.DEFINE_string(name, default, help_, **kw)
  else:  # tuple[int, ...]
    define_int_list(name, default, help_, flag_values)
  if name in ("syn_aug", "real_aug"):
    flags.register_validator(name, _valid_augmentation,
                             "must be 'none' or operations of {flip, "
                             "rotate} joined by '_', e.g. flip_rotate",
                             flag_values)


def flag_fields(cfg_cls, base):
  """(flag name, owning class, field, default, type) of every flag of a
  config; stage configs (`NESTED` of the class, if any) are flattened with
  their prefix, leaving out the fields the run sets."""
  nested = getattr(sys.modules[cfg_cls.__module__], "NESTED", {}) if \
      hasattr(base, "replace_flat") else {}
  hints = typing.get_type_hints(cfg_cls)
  for f in dataclasses.fields(cfg_cls):
    if f.name in nested:
      prefix, from_run = nested[f.name]
      sub = getattr(base, f.name)
      sub_hints = typing.get_type_hints(type(sub))
      for g in dataclasses.fields(sub):
        if g.name not in from_run:
          yield (prefix + g.name, type(sub), g, getattr(sub, g.name),
                 sub_hints[g.name])
    else:
      yield f.name, cfg_cls, f, getattr(base, f.name), hints[f.name]


def _valid_augmentation(value: str) -> bool:
  try:
    augment.parse(value)
  except ValueError:
    return False
  return True


def define_flags(presets, cfg_cls=config_lib.DistillConfig,
                 flag_values=FLAGS) -> None:
  """Defines one flag per config field plus the run flags.

  Args:
    presets: the experiment's `presets.Presets` table.
    cfg_cls: its config class (one of `CONFIG_CLASSES`).
    flag_values: where to define the flags (tests pass their own).
  """
  base = presets()
  kw = dict(flag_values=flag_values)
  flags.DEFINE_enum("preset", presets.default, list(presets.names),
                    "named configuration; other flags override its fields. "
                    + presets.help(), **kw)
  flags.DEFINE_string("workdir", None, "output directory (created if "
                      "missing)", required=True, **kw)
  flags.DEFINE_string(
      "data_dir", os.environ.get("DISTILL_JAX_DATA_DIR"),
      "folder with local dataset copies (e.g. ../shared/datasets); default "
      "$DISTILL_JAX_DATA_DIR, else Debian's package or TFDS online", **kw)
  flags.DEFINE_bool("resume", False, "continue from the newest checkpoint",
                    **kw)
  flags.DEFINE_bool("progress", True, "show a progress line on stderr", **kw)
  define_platform_flags(flag_values)
  for name, owner, f, default, hint in flag_fields(cfg_cls, base):
    _define_field(owner, f, default, hint, flag_values, name=name)


def define_platform_flags(flag_values=FLAGS) -> None:
  """The flags of the `platform.Platform` fields (`platform_from_flags`)."""
  default = platform.Platform()
  kw = dict(flag_values=flag_values)
  flags.DEFINE_bool(
      "xla_cpu_defaults", default.xla_cpu_defaults, "compile with XLA's "
      "default options on CPU instead of the library's (which take less "
      "compiler memory at the same speed)", **kw)
  flags.DEFINE_enum(
      "cpu_wide_conv", default.cpu_wide_conv, list(layers.CONV_IMPLS),
      "convolution implementation on CPU for 32+ input channels (the same "
      "values up to float rounding; xla_vjp is the fastest, im2col also "
      "supports jax.jvp)", **kw)
  flags.DEFINE_integer(
      "malloc_arenas", None, "glibc malloc arenas, set before JAX starts "
      "its threads (0: glibc's default; default: 1 for the RaT-BPTT entry "
      "points, 0 for the others)", lower_bound=0, **kw)
  flags.DEFINE_bool(
      "keep_malloc_mapped", None, "keep large malloc blocks mapped instead "
      "of unmapping them after every use: faster, more resident memory "
      "(default: on for rat_bptt_cifar; the DD trainer always does on CPU)",
      **kw)
  flags.DEFINE_bool(
      "tensorboard", default.tensorboard, "also write the metrics as "
      "TensorBoard events in <workdir>/tensorboard (needs tensorboardX)",
      **kw)
  flags.DEFINE_integer(
      "profile_steps", default.profile_steps, "trace this many outer steps "
      "with jax.profiler into <workdir>/profile (0: off)", lower_bound=0,
      **kw)
  flags.DEFINE_string(
      "mesh", default.mesh, "device mesh: auto (every device on the "
      "method's axis: inits for DD/RaT-BPTT/Boost-DD, data for the decoupled "
      "methods), none (one device) or sizes like inits:4,data:2", **kw)
  flags.DEFINE_string(
      "checkpoint_dir", default.checkpoint_dir, "where checkpoints go: any "
      "etils.epath path, e.g. gs://bucket/run (default: <workdir>/"
      "checkpoints); --resume reads them from there", **kw)
  flags.DEFINE_string(
      "coordinator_address", None, "multi-host runs: host:port of process "
      "0's coordinator (start the same command on every host with its "
      "--process_id), or auto to read the settings from the cluster (Cloud "
      "TPU pod slices, SLURM, Open MPI); default: one process", **kw)
  flags.DEFINE_integer(
      "num_processes", None, "multi-host runs: processes in all (default: "
      "from the cluster with --coordinator_address=auto)", lower_bound=1,
      **kw)
  flags.DEFINE_integer(
      "process_id", None, "multi-host runs: this process, 0 .. "
      "num_processes-1; process 0 writes the outputs (default: from the "
      "cluster with --coordinator_address=auto)", lower_bound=0, **kw)


def distributed_from_flags(flag_values=FLAGS) -> bool:
  """Joins a multi-host run as the flags say (`distributed.initialize`);
  False for one process. A bad combination ends the program with one
  `error:` line."""
  from distill_jax.platform import distributed  # pylint: disable=g-import-not-at-top
  if "coordinator_address" not in flag_values:
    return False
  try:
    return distributed.initialize(flag_values.coordinator_address,
                                  flag_values.num_processes,
                                  flag_values.process_id)
  except ValueError as e:
    fail(e)


def platform_from_flags(flag_values=FLAGS, *, malloc_arenas: int = 0,
                        keep_mapped: bool = False) -> platform.Platform:
  """The `Platform` of the platform flags; `malloc_arenas` and
  `keep_mapped` are the entry point's defaults for the malloc flags not
  given. A bad value ends the program with one `error:` line (`fail`)."""
  arenas, keep = flag_values.malloc_arenas, flag_values.keep_malloc_mapped
  try:
    return platform.Platform(
        xla_cpu_defaults=flag_values.xla_cpu_defaults,
        cpu_wide_conv=flag_values.cpu_wide_conv,
        malloc_arenas=malloc_arenas if arenas is None else arenas,
        keep_malloc_mapped=keep_mapped if keep is None else keep,
        tensorboard=flag_values.tensorboard,
        profile_steps=flag_values.profile_steps, mesh=flag_values.mesh,
        checkpoint_dir=flag_values.checkpoint_dir)
  except ValueError as e:
    fail(e)


def config_from_flags(presets, cfg_cls=config_lib.DistillConfig,
                      flag_values=FLAGS):
  """The preset named by --preset with every explicitly given flag applied.

  A config that does not validate ends the program with one `error:` line
  (`fail`).
  """
  try:
    cfg = presets(flag_values.preset)
    overrides = {}
    for name, _, _, default, _ in flag_fields(cfg_cls, cfg):
      if flag_values[name].present:
        value = flag_values[name].value
        if isinstance(default, tuple):
          value = tuple(int(v) for v in value)
        overrides[name] = value
    if hasattr(cfg, "replace_flat"):
      return cfg.replace_flat(**overrides).validate()
    return dataclasses.replace(cfg, **overrides).validate()
  except ValueError as e:
    fail(e)


def run_flags(**kwargs) -> dict:
  """--data_dir, --resume and --progress as `run_fn` keyword arguments."""
  return dict(data_dir=FLAGS.data_dir, resume=FLAGS.resume,
              show_progress=FLAGS.progress, **kwargs)


def run_and_report(run_fn, cfg, workdir: str, *,
                   platform_cfg: platform.Platform | None = None,
                   **kwargs) -> dict:
  """Runs `run_fn(cfg, workdir, ...)`, turning user errors into messages.

  `platform_cfg` (see `platform_from_flags`), when given, is configured
  first (`platform.configure`: compile options, CPU convolutions, malloc).
  """
  if not FLAGS["verbosity"].present:  # Keep library INFO logs quiet.
    logging.set_verbosity(logging.WARNING)
  from distill_jax import data  # pylint: disable=g-import-not-at-top
  from distill_jax.run import storage  # pylint: disable=g-import-not-at-top
  distributed_from_flags()  # before any JAX computation.
  if platform_cfg is not None:
    platform.configure(platform_cfg)
  from distill_jax.run import guard  # pylint: disable=g-import-not-at-top
  try:
    report = run_fn(cfg, workdir, **kwargs)
  except guard.DivergedError as e:  # a ValueError: caught before them.
    sys.stderr.write(f"\nerror: {e}\n")
    sys.exit(4)
  except (data.DatasetNotFoundError, storage.DistilledFileError) as e:
    sys.stderr.write(f"\nerror: {e}\n")
    sys.exit(2)
  except ValueError as e:
    sys.stderr.write(f"\nerror: {e}\n")
    sys.exit(2)
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    sys.stderr.write(
        f"\nerror: out of device memory ({str(e).splitlines()[0][:200]}). "
        "Lower the per-pass sizes: --eval_batch (evaluation), --real_batch "
        "or --real_chunk (meta-loss), --num_inits / --init_group (sampled "
        "initialisations), or the window for RaT-BPTT; a run with "
        "checkpoints continues with --resume.\n")
    sys.exit(3)
  from distill_jax.platform import distributed  # pylint: disable=g-import-not-at-top
  if not distributed.is_writer():  # process 0 reports.
    return report
  acc = report.get("test_acc")
  if acc:
    print(f"test accuracy: {acc['mean']:.2f} +- {acc['std']:.2f} % over "
          f"{acc['n']} network(s)")
  print(f"outputs: {os.path.abspath(workdir)}")
  print(json.dumps({k: v for k, v in report.items()
                    if k not in ("learned_lrs",)}, indent=1))
  return report


def distill_main(presets):
  """Returns an absl `main` that runs `train.run` on the flag config."""
  def main(argv):
    check_args(argv)
    check_workdir(FLAGS.workdir)
    cfg = config_from_flags(presets)
    from distill_jax.run import train_dd as train  # pylint: disable=g-import-not-at-top
    run_and_report(train.run, cfg, FLAGS.workdir,
                   platform_cfg=platform_from_flags(), **run_flags())
  return main


def rat_main(presets, run_fn, extra_kwargs=dict, keep_mapped: bool = False):
  """Returns an absl `main` running `run_fn(cfg, workdir, ...)` on the
  RatConfig of the flags; `extra_kwargs()` (called after flag parsing)
  adds the experiment's own flags; `keep_mapped` is the default of
  --keep_malloc_mapped."""
  def main(argv):
    check_args(argv)
    check_workdir(FLAGS.workdir)
    cfg = config_from_flags(presets, cfg_cls=rat_bptt.RatConfig)
    # One malloc arena: RaT-BPTT jobs' peak memory 677 -> 594 MiB at the
    # same step time (BUILD.md, Benchmarks).
    platform_cfg = platform_from_flags(malloc_arenas=1,
                                       keep_mapped=keep_mapped)
    run_and_report(run_fn, cfg, FLAGS.workdir, platform_cfg=platform_cfg,
                   **run_flags(**extra_kwargs()))
  return main


def config_main(presets, cfg_cls, run_fn, **run_kwargs):
  """Returns an absl `main` running `run_fn(cfg, workdir, data_dir=...,
  show_progress=..., **run_kwargs)` on the `cfg_cls` config of the flags
  (the paper experiments and pretraining, which have no --resume)."""
  def main(argv):
    check_args(argv)
    check_workdir(FLAGS.workdir)
    cfg = config_from_flags(presets, cfg_cls)
    run_and_report(run_fn, cfg, FLAGS.workdir,
                   platform_cfg=platform_from_flags(),
                   data_dir=FLAGS.data_dir, show_progress=FLAGS.progress,
                   **run_kwargs)
  return main
