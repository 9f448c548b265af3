"""Shared plumbing of the absl entry points in `experiments/`.

Every field of `DistillConfig` becomes a flag of the same name whose default
is the experiment's preset value, so `--help` shows the real defaults and a
flag given on the command line always wins. Extra flags: --workdir,
--data_dir, --resume, --preset. The library itself never reads flags.
"""

import dataclasses
import json
import os
import sys
import typing

from absl import app
from absl import flags
from absl import logging

from distill_jax import config as config_lib

FLAGS = flags.FLAGS

_CHOICES = {"arch": config_lib.ARCHS, "init": config_lib.INITS,
            "init_mode": config_lib.INIT_MODES, "norm": config_lib.NORMS,
            "pooling": config_lib.POOLINGS, "remat": config_lib.REMAT_POLICIES,
            "objective": config_lib.OBJECTIVES,
            "image_init": config_lib.IMAGE_INITS}


def define_flags(presets: dict, default_preset: str = "default",
                 cfg_cls=config_lib.DistillConfig) -> None:
  """Defines one flag per config field plus the run flags."""
  base = presets[default_preset]()
  flags.DEFINE_enum("preset", default_preset, sorted(presets),
                    "Named configuration; other flags override its fields.")
  flags.DEFINE_string("workdir", None, "Output directory.", required=True)
  flags.DEFINE_string(
      "data_dir", os.environ.get("DISTILL_JAX_DATA_DIR"),
      "Folder with local dataset copies (e.g. ../shared/datasets); default "
      "$DISTILL_JAX_DATA_DIR, else Debian's package or TFDS online.")
  flags.DEFINE_bool("resume", False, "Continue from the newest checkpoint.")
  flags.DEFINE_bool("progress", True, "Show a progress line on stderr.")
  hints = typing.get_type_hints(cfg_cls)
  # Enum flags for DistillConfig's choice fields; other config classes (e.g.
  # RatConfig, whose `image_init` has other values) validate their own.
  choices = _CHOICES if issubclass(cfg_cls, config_lib.DistillConfig) else {}
  for f in dataclasses.fields(cfg_cls):
    default, help_ = getattr(base, f.name), f"DistillConfig.{f.name}"
    kind = hints[f.name]
    if f.name in choices:
      flags.DEFINE_enum(f.name, default, list(choices[f.name]), help_)
    elif kind is bool:
      flags.DEFINE_bool(f.name, default, help_)
    elif kind is int:
      flags.DEFINE_integer(f.name, default, help_)
    elif kind is float:
      flags.DEFINE_float(f.name, default, help_)
    elif kind is str:
      flags.DEFINE_string(f.name, default, help_)
    else:  # tuple[int, ...]
      flags.DEFINE_list(f.name, [str(v) for v in default], help_)


def config_from_flags(presets: dict, cfg_cls=config_lib.DistillConfig):
  """The preset named by --preset with every explicitly given flag applied."""
  cfg = presets[FLAGS.preset]()
  overrides = {}
  for f in dataclasses.fields(cfg_cls):
    if FLAGS[f.name].present:
      value = FLAGS[f.name].value
      if isinstance(getattr(cfg, f.name), tuple):
        value = tuple(int(v) for v in value)
      overrides[f.name] = value
  cfg = dataclasses.replace(cfg, **overrides)
  try:
    return cfg.validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def run_and_report(run_fn, cfg, workdir: str, *, malloc_arenas: int = 0,
                   keep_mapped: bool = False, **kwargs) -> dict:
  """Runs `run_fn(cfg, workdir, ...)`, turning user errors into messages.

  `malloc_arenas` caps glibc's malloc arenas first (0: glibc's default;
  env DISTILL_JAX_MALLOC_ARENAS overrides; see
  `xla_options.limit_malloc_arenas`); `keep_mapped` keeps large malloc
  blocks mapped (env DISTILL_JAX_KEEP_MALLOC_MAPPED=0/1 overrides; see
  `xla_options.keep_malloc_mapped`).
  """
  if not FLAGS["verbosity"].present:  # Keep library INFO logs quiet.
    logging.set_verbosity(logging.WARNING)
  from distill_jax import data  # pylint: disable=g-import-not-at-top
  from distill_jax import storage  # pylint: disable=g-import-not-at-top
  from distill_jax import xla_options  # pylint: disable=g-import-not-at-top
  try:
    xla_options.limit_malloc_arenas_from_env(malloc_arenas)
    xla_options.keep_malloc_mapped_from_env(keep_mapped)
  except ValueError as e:
    sys.stderr.write(f"\nerror: {e}\n")
    sys.exit(2)
  try:
    report = run_fn(cfg, workdir, **kwargs)
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
  acc = report.get("test_acc")
  if acc:
    print(f"test accuracy: {acc['mean']:.2f} +- {acc['std']:.2f} % over "
          f"{acc['n']} network(s)")
  print(f"outputs: {os.path.abspath(workdir)}")
  print(json.dumps({k: v for k, v in report.items()
                    if k not in ("learned_lrs",)}, indent=1))
  return report


def distill_main(presets: dict):
  """Returns an absl `main` that runs `train.run` on the flag config."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from distill_jax import train  # pylint: disable=g-import-not-at-top
    cfg = config_from_flags(presets)
    run_and_report(train.run, cfg, FLAGS.workdir, data_dir=FLAGS.data_dir,
                   resume=FLAGS.resume, show_progress=FLAGS.progress)
  return main
