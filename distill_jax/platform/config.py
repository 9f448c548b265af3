"""The explicit platform options: compile options, CPU kernels, malloc.

None of these change what is computed, only how fast, in how much
memory, where checkpoints go, and what is recorded besides the outputs (TensorBoard events, a
profiler trace: `run.observe`): `xla_cpu_defaults` picks XLA:CPU's compile options and
`cpu_wide_conv` the convolution formulation `layers.conv2d(impl="auto")`
uses for wide inputs on CPU (float-equivalent formulations), the malloc
fields tune the host process.

The command-line entry points build a `Platform` from their flags
(`--xla_cpu_defaults`, `--cpu_wide_conv`, `--malloc_arenas`,
`--keep_malloc_mapped`) and call `configure` once before compiling. Python
code does the same:

  from distill_jax import platform
  platform.configure(platform.Platform(cpu_wide_conv="im2col"))

`xla_options.options` and `layers.auto_conv_impl` read `current()` when a
step is built or traced, so `configure` must come before the steps are
built; programs already traced and compiled keep the options they were
built with (`xla_options.release_compiled` drops them).
"""

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class Platform:
  """Platform options (defaults: the measured fastest configuration).

  Attributes:
    xla_cpu_defaults: True compiles with XLA's default options; False adds
      the library's CPU options (`xla_options.CPU_OPTIONS`). GPU and TPU
      always compile with XLA's defaults.
    cpu_wide_conv: the convolution implementation `conv2d(impl="auto")`
      uses on CPU for C_in >= `layers.WIDE_INPUT`, one of
      `layers.CONV_IMPLS`. "xla_vjp" (fastest) supports reverse mode only;
      "im2col" keeps `jax.jvp` working.
    malloc_arenas: glibc malloc arenas for threads started from now on (0:
      glibc's default; None: the entry point's default, 1 for RaT-BPTT and
      0 for the others).
    keep_malloc_mapped: True keeps large malloc blocks mapped instead of
      unmapping them after every use (`xla_options.keep_malloc_mapped`);
      None: the entry point's default (True for `rat_bptt_cifar`).
    tensorboard: also write the host loop's metrics as TensorBoard events
      in <workdir>/tensorboard (`run.observe`; needs tensorboardX).
    profile_steps: trace this many outer steps with `jax.profiler` into
      <workdir>/profile (0: off).
    mesh: the ("inits", "data") device mesh (`platform.mesh.parse`):
      "auto" (every device on the method's axis), "none" (one device) or
      sizes like "inits:4,data:2".
    checkpoint_dir: where the host loop keeps its checkpoints: "" for
      <workdir>/checkpoints, else any `etils.epath` path (gs://bucket/run,
      a local folder), one per run (one host loop: not Boost-DD).
  """
  xla_cpu_defaults: bool = False
  cpu_wide_conv: str = "xla_vjp"
  malloc_arenas: int | None = None
  keep_malloc_mapped: bool | None = None
  tensorboard: bool = False
  profile_steps: int = 0
  mesh: str = "auto"
  checkpoint_dir: str = ""

  def __post_init__(self):
    from distill_jax.nn import layers  # pylint: disable=g-import-not-at-top
    if not isinstance(self.xla_cpu_defaults, bool):
      raise ValueError(f"xla_cpu_defaults={self.xla_cpu_defaults!r} must be "
                       "True (XLA's default compile options) or False.")
    if self.cpu_wide_conv not in layers.CONV_IMPLS:
      raise ValueError(f"cpu_wide_conv={self.cpu_wide_conv!r} must be one of "
                       f"{', '.join(layers.CONV_IMPLS)}.")
    if self.malloc_arenas is not None and (
        isinstance(self.malloc_arenas, bool) or
        not isinstance(self.malloc_arenas, int) or self.malloc_arenas < 0):
      raise ValueError(f"malloc_arenas={self.malloc_arenas!r} must be None "
                       "(entry point default), 0 (glibc's default) or a "
                       "positive number of arenas.")
    if not isinstance(self.keep_malloc_mapped, (bool, type(None))):
      raise ValueError(f"keep_malloc_mapped={self.keep_malloc_mapped!r} must "
                       "be None (entry point default), True or False.")
    if not isinstance(self.tensorboard, bool):
      raise ValueError(f"tensorboard={self.tensorboard!r} must be True or "
                       "False.")
    if isinstance(self.profile_steps, bool) or not isinstance(
        self.profile_steps, int) or self.profile_steps < 0:
      raise ValueError(f"profile_steps={self.profile_steps!r} must be a "
                       "number of outer steps >= 0 (0: off).")
    from distill_jax.platform import mesh  # pylint: disable=g-import-not-at-top
    mesh.parse(self.mesh)
    if not isinstance(self.checkpoint_dir, str):
      raise ValueError(f"checkpoint_dir={self.checkpoint_dir!r} must be a "
                       "path ('' for <workdir>/checkpoints).")


@functools.cache
def _default() -> Platform:
  return Platform()


_active: Platform | None = None  # Set by `configure` (host-side).


def configure(platform: Platform) -> Platform:
  """Makes `platform` the active configuration; returns the previous one.

  Host-side set-up, called once before the steps are built and compiled.
  The malloc settings are process-wide and glibc has no undo: a positive
  `malloc_arenas` caps the arenas and `keep_malloc_mapped=True` keeps large
  blocks mapped from now on; None, 0 and False leave glibc as it is.

  Raises:
    TypeError: `platform` is not a `Platform`.
  """
  from distill_jax.platform import xla_options  # pylint: disable=g-import-not-at-top
  global _active
  if not isinstance(platform, Platform):
    raise TypeError(f"configure takes a Platform, not {type(platform)}.")
  previous, _active = current(), platform
  if platform.malloc_arenas:
    xla_options.limit_malloc_arenas(platform.malloc_arenas)
  if platform.keep_malloc_mapped:
    xla_options.keep_malloc_mapped()
  return previous


def current() -> Platform:
  """The active `Platform` (`Platform()` until `configure` is called)."""
  return _default() if _active is None else _active
