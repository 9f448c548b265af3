"""XLA compile options the library's large programs are compiled with.

On CPU the outer steps and the evaluation loops are compiled with XLA:CPU's
fusion emitters turned off (`xla_cpu_use_fusion_emitters=False`) and
without YNNPACK's convolution fusion (`YNN_FUSIONS`, below). The
emitters' MLIR pipeline took ~540 MiB of compiler working memory for the
RaT-BPTT reference-setting step and ~420 MiB for the DD LeNet step, which
the process then keeps; without them the peak resident memory of those
benchmarks dropped from ~1.2 GiB to 0.65-0.75 GiB at the same step time
(BUILD.md, Benchmarks). GPU and TPU compile with XLA's defaults.

`Platform(xla_cpu_defaults=True)` (`distill_jax.platform.configure`, flag
`--xla_cpu_defaults`) compiles with XLA's defaults instead, for comparison;
`options` reads the active `Platform` when a step is built.

`precompile` compiles a jitted function ahead of its first call and then
hands the compiler's freed heap back to the operating system (glibc keeps
it otherwise: ~120 MiB after the RaT-BPTT step), so the run's buffers start
from a lower resident size.
"""

import ctypes
import ctypes.util
import functools
import gc
import types
from typing import Any, Callable, Mapping

import jax

from distill_jax.platform import config

# YNNPACK library fusions for dots and reductions, but not for convolutions:
# YNNPACK's convolution runs the kernel gradient of a 3x3 conv (C_in as the
# batch, the images as features) at a quarter of XLA's own convolution
# (80 vs 22 ms at 100x16x16x128), which made the CIFAR-10 RaT-BPTT step
# 75.8 s instead of 60.4 s (BUILD.md, Benchmarks).
YNN_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"

# The library's XLA:CPU compile options (read-only).
CPU_OPTIONS: Mapping[str, Any] = types.MappingProxyType({
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_experimental_ynn_fusion_type": YNN_FUSIONS,
})


@functools.cache
def _accepted(key: str, value: Any) -> bool:
  """Whether this jaxlib's CPU compiler knows the option (they are XLA's
  experimental flags and may be renamed); unknown ones are left out."""
  try:
    jax.jit(lambda x: x + 1).lower(0.0).compile(
        compiler_options={key: value})
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def options(backend: str | None = None) -> dict[str, Any]:
  """The compile options for `backend` (default: JAX's default backend).

  On CPU: `CPU_OPTIONS` (those this jaxlib accepts), or none when the active
  `Platform` has `xla_cpu_defaults`; on GPU and TPU none.
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or config.current().xla_cpu_defaults:
    return {}
  return {k: v for k, v in CPU_OPTIONS.items() if _accepted(k, v)}


def jit(fun: Callable, **kwargs) -> Callable:
  """`jax.jit` with `options()` (read now) merged under any
  `compiler_options` given."""
  opts = {**options(), **(kwargs.pop("compiler_options", None) or {})}
  if opts:
    kwargs["compiler_options"] = opts
  return jax.jit(fun, **kwargs)


class _LazyJit:
  """`jit(fun, **kwargs)` built at first use, so that decorating a module
  function does not initialise a JAX backend at import time."""

  def __init__(self, fun: Callable, kwargs: dict):
    self._fun, self._kwargs, self._jitted = fun, kwargs, None
    functools.update_wrapper(self, fun)

  def _get(self):
    if self._jitted is None:
      self._jitted = jit(self._fun, **self._kwargs)
    return self._jitted

  def __call__(self, *args, **kwargs):
    return self._get()(*args, **kwargs)

  def __getattr__(self, name):  # .lower, ._cache_size, ...
    return getattr(self._get(), name)


def lazy_jit(fun: Callable | None = None, **kwargs):
  """Decorator form of `jit` for module-level functions (options resolved at
  the first call): `@xla_options.lazy_jit(static_argnames=...)`."""
  if fun is None:
    return lambda f: _LazyJit(f, kwargs)
  return _LazyJit(fun, kwargs)


def _glibc(name: str):
  """The C library's function `name`, or None (no glibc, e.g. macOS/musl)."""
  try:
    return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"),
                   name)
  except (OSError, AttributeError):
    return None


def release_host_memory() -> None:
  """Returns free heap pages to the OS (glibc `malloc_trim`; else a no-op)."""
  trim = _glibc("malloc_trim")
  if trim is not None:
    trim(0)


def release_compiled() -> None:
  """Drops JAX's caches of traced and compiled programs, then returns the
  freed heap to the OS. Process-wide: every jitted function compiles again
  on its next call. On XLA:CPU a compiled RaT-BPTT outer step keeps ~100
  MiB resident until its cache entry goes."""
  jax.clear_caches()
  gc.collect()
  release_host_memory()


M_ARENA_MAX = -8  # glibc mallopt parameter.


def limit_malloc_arenas(n: int = 1) -> bool:
  """Caps glibc's malloc arenas at `n` for threads that allocate from now on.

  XLA:CPU compiles and runs on several threads; each gets its own glibc
  arena, and memory freed in one (the compiler's) is not reused by the
  others, so the process keeps more resident memory than it uses. One arena
  lowered the peak of the RaT-BPTT reference-setting job from 677 to 594
  MiB at the same step time, but made the small DD LeNet step 3-7% slower
  (BUILD.md, Benchmarks). So the RaT-BPTT command-line entry points call
  this with n = 1 before JAX starts its threads, the DD ones keep glibc's
  default (`Platform.malloc_arenas`, flag `--malloc_arenas`, overrides
  both; 0 = glibc's default); a library import does not. Returns False
  where glibc's `mallopt` is unavailable.
  """
  mallopt = _glibc("mallopt")
  if n <= 0 or mallopt is None:
    return False
  return bool(mallopt(M_ARENA_MAX, int(n)))


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters.


def keep_malloc_mapped() -> bool:
  """Stops glibc from returning large blocks to the OS after every use.

  glibc serves blocks above ~32 MB with `mmap` and unmaps them on `free`, so
  every call of a jitted function page-faults its big temporaries in again.
  With `mmap` off for malloc and no heap trim the memory stays mapped (the
  resident size stays at the peak). The CIFAR-10 RaT-BPTT recipe step on a
  2-core AVX2 machine: 174-177 -> 153 s, peak RSS 1.56 -> 2.57 GiB; the DD
  trainer always does this (`layers.tune_cpu_malloc`), `rat_bptt_cifar` by
  default (`Platform.keep_malloc_mapped`, flag `--keep_malloc_mapped`).
  Returns False where glibc's `mallopt` is unavailable or refuses.
  """
  mallopt = _glibc("mallopt")
  if mallopt is None:
    return False
  return (mallopt(M_MMAP_MAX, 0) == 1 and
          mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)


def precompile(jitted, *args, **kwargs) -> None:
  """Compiles `jitted` for these arguments (later calls reuse it), then
  releases the compiler's freed memory. Arguments are not consumed."""
  jitted.lower(*args, **kwargs).compile()
  release_host_memory()
