"""Pure-function conv / pooling layers with backend-tuned implementations.

Every implementation except ``"xla_vjp"`` is plain ``jax.numpy`` / ``lax``
code, so it supports forward-mode, reverse-mode and any nesting of the two
(``jax.grad`` of ``jax.grad``, ``jax.jvp`` of ``jax.grad``, ...).
``"xla_vjp"`` supports reverse mode at any depth (what the dataset-
distillation meta-gradient needs) but not ``jax.jvp``; on CPU ``"auto"``
picks it for wide inputs, so forward-mode code there passes
``impl="im2col"`` or configures
``platform.Platform(cpu_wide_conv="im2col")`` (``distill_jax.platform``,
flag ``--cpu_wide_conv``).

The implementations compute the same function: they differ in speed and
in float rounding (summation order), not in what they compute, so the
backend-dependent ``"auto"`` choice below is a performance choice. An
explicit ``impl=`` (or ``cpu_wide_conv``) overrides it.

Layouts: activations are NHWC, conv kernels HWIO, stride 1.

Implementations (``impl=``):

* ``"xla"``: ``lax.conv_general_dilated`` / ``lax.reduce_window``. Best on
  GPU/TPU.
* ``"xla_vjp"``: ``lax.conv_general_dilated`` with custom reverse-mode
  rules that keep every derivative, at any order, in the forward
  convolution form (below). On XLA:CPU JAX's own rules lead, inside loops,
  to convolutions run by a naive loop nest: the RaT-BPTT outer step with
  ``"xla"`` was 20x slower than with ``"im2col"``; with ``"xla_vjp"`` it is
  faster than both. Default on CPU for C_in >= 32.
* ``"im2col"``: the KxK shifted slices of the (padded) input are concatenated
  along channels and contracted with the reshaped kernel in one
  ``dot_general``. Forward and weight gradient are plain GEMMs; the input
  gradient is a GEMM followed by pad/slice-adds.
* ``"im2col_t"``: like ``"im2col"`` but the patch matrix is built
  taps-major, shape (KH*KW*C_in, N*H'*W'), from the input transposed to
  (C_in, N, H, W). The slices then copy contiguous rows instead of C_in-wide
  fragments, which is several times faster on XLA:CPU (and a free transpose
  for C_in == 1). Default on CPU for C_in < 32.
* ``"shift"``: sum over the KxK taps of ``slice * w[i, j]`` computed as a
  small per-tap contraction; only sensible for very few input channels.
* ``"reshape"`` (pooling): non-overlapping windows as a reshape + ``max`` /
  ``mean``; its gradient is an elementwise select instead of
  ``select_and_scatter``.
* ``"auto"``: the fastest measured choice for ``jax.default_backend()``
  (see ``docs/perf_notes.md``), read when the function is traced: "xla" on
  GPU/TPU; on CPU "im2col_t" for narrow inputs (C_in < 32: LeNet, first
  layers) and the active ``Platform.cpu_wide_conv`` (default "xla_vjp")
  for wide ones (docs/rat_bptt_perf.md). Pooling "auto" is "reshape" on
  CPU and "xla" elsewhere: the same values; the gradient differs only
  where a window has tied maxima (``reshape`` splits it between them,
  ``xla`` gives it to one).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import jax
from jax import lax
import jax.numpy as jnp

from distill_jax.platform import config as platform_config

Padding = Union[int, str, Sequence[Tuple[int, int]]]

CONV_IMPLS = ("xla", "xla_vjp", "im2col", "im2col_t", "shift")
POOL_IMPLS = ("xla", "reshape")


def _on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _pad_pairs(padding: Padding, kh: int, kw: int) -> Tuple[Tuple[int, int],
                                                            Tuple[int, int]]:
  """Normalizes ``padding`` to ((top, bottom), (left, right))."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return (0, 0), (0, 0)
    if mode == "SAME":
      # Stride 1: total padding k - 1, the extra pixel goes after (as XLA).
      return ((kh - 1) // 2, kh - 1 - (kh - 1) // 2), (
          (kw - 1) // 2, kw - 1 - (kw - 1) // 2)
    raise ValueError(f"Unknown padding {padding!r}.")
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  (t, b), (l, r) = padding
  return (int(t), int(b)), (int(l), int(r))


def _conv_xla(x, w, pads):
  return lax.conv_general_dilated(
      x, w, window_strides=(1, 1), padding=pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# "xla_vjp": XLA's convolution with a reverse-mode rule that stays inside
# three canonical convolutions. JAX's own transpose rules for
# `lax.conv_general_dilated` emit convolutions with other dimension numbers
# (the kernel gradient contracts over the batch, with the image as the
# "kernel"); XLA:CPU rewrites those into its fast forward form outside
# loops but not inside a `while` body, where the unrolled inner loop of
# dataset distillation runs them. Here the forward convolution
# F(x, w), its input gradient B_x(g, w) and its kernel gradient B_w(x, g)
# are each a `custom_vjp` whose cotangents are again F, B_x or B_w:
#   F(x, w):   x̄ = B_x(ȳ, w),   w̄ = B_w(x, ȳ)
#   B_x(g, w): ḡ = F(c, w),     w̄ = B_w(c, g)     (c: the cotangent)
#   B_w(x, g): x̄ = B_x(g, c),   ḡ = F(x, c)
# (from <c, B_x(g, w)> = <F(c, w), g> and <c, B_w(x, g)> = <F(x, c), g>), so
# any depth of reverse-mode nesting runs the three fast forms. B_x and B_w
# are written as forward-form convolutions (NHWC x HWIO -> NHWC) with
# explicit transposes: inside a `while` loop XLA:CPU does not canonicalise
# the dimension numbers JAX's transpose rules produce and runs those
# convolutions with a naive loop nest (the kernel gradient of a 16x14x14x128
# layer: 552 ms in a scan vs 3.5 ms outside, docs/rat_bptt_perf.md). Reverse
# mode only: `jax.jvp` through it raises; use impl="im2col" for forward mode.


def _xla_input_grad(g, w, pads, x_hw):
  """x̄ of F: a forward-form convolution of g with the flipped, io-swapped kernel."""
  kh, kw = w.shape[0], w.shape[1]
  (t, b), (l, r) = pads
  tpads = ((kh - 1 - t, kh - 1 - b), (kw - 1 - l, kw - 1 - r))
  if min(min(p) for p in tpads) < 0:  # padding wider than the kernel.
    x0 = jnp.zeros((g.shape[0],) + tuple(x_hw) + (w.shape[2],), g.dtype)
    return jax.vjp(lambda x: _conv_xla(x, w, pads), x0)[1](g)[0]
  wt = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
  return _conv_xla(g, wt, tpads)


def _xla_kernel_grad(x, g, pads, k_hw):
  """w̄ of F, as a forward-form convolution of x^T (C_in as batch, N as features) with g^T."""
  del k_hw  # = H + pads - H_out + 1, implied.
  out = _conv_xla(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)),
                  pads)  # (C_in, KH, KW, C_out)
  return jnp.transpose(out, (1, 2, 0, 3))


def _closed_op(impl, bwd, nondiff_argnums):
  """`impl(a, b, *static)` as a `custom_vjp` with reverse rule `bwd`.

  The forward rule computes its output with the custom_vjp function itself,
  not `impl`: an enclosing differentiation (the meta-gradient through an
  inner `jax.vjp`) differentiates the forward rule, and would otherwise
  apply JAX's own convolution rules to `impl`.
  """
  op = jax.custom_vjp(impl, nondiff_argnums=nondiff_argnums)
  op.defvjp(lambda *args: (op(*args), args[:2]), bwd)
  return op


def _conv_bwd(pads, res, ct):
  x, w = res
  return (_input_grad_vjp(ct, w, pads, x.shape[1:3]),
          _kernel_grad_vjp(x, ct, pads, w.shape[:2]))


def _input_grad_bwd(pads, x_hw, res, ct):
  del x_hw
  g, w = res
  return _conv_vjp(ct, w, pads), _kernel_grad_vjp(ct, g, pads, w.shape[:2])


def _kernel_grad_bwd(pads, k_hw, res, ct):
  del k_hw
  x, g = res
  return _input_grad_vjp(g, ct, pads, x.shape[1:3]), _conv_vjp(x, ct, pads)


_conv_vjp = _closed_op(_conv_xla, _conv_bwd, (2,))
_input_grad_vjp = _closed_op(_xla_input_grad, _input_grad_bwd, (2, 3))
_kernel_grad_vjp = _closed_op(_xla_kernel_grad, _kernel_grad_bwd, (2, 3))


def _pad_input(x, pads):
  (t, b), (l, r) = pads
  if t or b or l or r:
    x = jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
  return x


def _conv_im2col(x, w, pads):
  kh, kw, ci, co = w.shape
  x = _pad_input(x, pads)
  n, h, wd, _ = x.shape
  ho, wo = h - kh + 1, wd - kw + 1
  cols = [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)  # (n, ho, wo, kh*kw*ci)
  return lax.dot_general(
      patches, w.reshape(kh * kw * ci, co), (((3,), (0,)), ((), ())))


def _conv_im2col_t(x, w, pads):
  kh, kw, ci, co = w.shape
  x = _pad_input(x, pads)
  n, h, wd, _ = x.shape
  ho, wo = h - kh + 1, wd - kw + 1
  xt = jnp.transpose(x, (3, 0, 1, 2))  # (ci, n, h, w); free when ci == 1.
  cols = [xt[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)]
  patches = jnp.stack(cols, axis=0).reshape(kh * kw * ci, n * ho * wo)
  y = lax.dot_general(
      patches, w.reshape(kh * kw * ci, co), (((0,), (0,)), ((), ())))
  return y.reshape(n, ho, wo, co)


def _conv_shift(x, w, pads):
  kh, kw, ci, co = w.shape
  x = _pad_input(x, pads)
  n, h, wd, _ = x.shape
  ho, wo = h - kh + 1, wd - kw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      s = x[:, i:i + ho, j:j + wo, :]
      if ci == 1:
        term = s * w[i, j, 0].reshape(1, 1, 1, -1)
      else:
        term = lax.dot_general(s, w[i, j], (((3,), (0,)), ((), ())))
      out = term if out is None else out + term
  return out


WIDE_INPUT = 32  # C_in from which "auto" uses `cpu_wide_conv` on CPU.


def auto_conv_impl(c_in: int, backend: str | None = None,
                   wide: str | None = None) -> str:
  """The implementation `conv2d(impl="auto")` uses for `c_in` input channels.

  Args:
    c_in: input channels.
    backend: "cpu", "gpu" or "tpu" (default: JAX's default backend).
    wide: the implementation for C_in >= WIDE_INPUT on CPU (default: the
      active `platform.current().cpu_wide_conv`).
  """
  if (backend or jax.default_backend()) != "cpu":
    return "xla"
  if c_in < WIDE_INPUT:
    return "im2col_t"
  return wide or platform_config.current().cpu_wide_conv


def conv2d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *,
           padding: Padding = 0, impl: str = "auto") -> jax.Array:
  """2-D convolution, stride 1.

  Args:
    x: input, shape (N, H, W, C_in).
    w: kernel, shape (KH, KW, C_in, C_out).
    b: optional bias, shape (C_out,).
    padding: int (symmetric), "SAME", "VALID" or ((top, bottom),
      (left, right)).
    impl: "auto", "xla", "xla_vjp", "im2col", "im2col_t" or "shift".

  Returns:
    Output of shape (N, H', W', C_out).
  """
  kh, kw = w.shape[0], w.shape[1]
  pads = _pad_pairs(padding, kh, kw)
  if impl == "auto":
    impl = auto_conv_impl(w.shape[2])
  if impl == "xla":
    y = _conv_xla(x, w, pads)
  elif impl == "xla_vjp":
    y = _conv_vjp(x, w, pads)
  elif impl == "im2col":
    y = _conv_im2col(x, w, pads)
  elif impl == "im2col_t":
    y = _conv_im2col_t(x, w, pads)
  elif impl == "shift":
    y = _conv_shift(x, w, pads)
  else:
    raise ValueError(f"Unknown conv impl {impl!r}; expected one of "
                     f"{('auto',) + CONV_IMPLS}.")
  if b is not None:
    y = y + b.reshape((1,) * (y.ndim - 1) + (-1,))
  return y


def _pool_xla(x, init, op, window, stride):
  return lax.reduce_window(x, init, op, (1, window, window, 1),
                           (1, stride, stride, 1), "VALID")


def _reshape_windows(x, window):
  n, h, w, c = x.shape
  ho, wo = h // window, w // window
  x = x[:, :ho * window, :wo * window, :]
  return x.reshape(n, ho, window, wo, window, c)


def max_pool(x: jax.Array, window: int = 2, stride: Optional[int] = None, *,
             impl: str = "auto") -> jax.Array:
  """Max pooling over NHWC input with VALID padding.

  Args:
    x: input, shape (N, H, W, C).
    window: square window size.
    stride: stride; defaults to ``window`` (non-overlapping).
    impl: "auto", "xla" or "reshape" (only for stride == window; other
      strides always use "xla").

  Returns:
    Pooled array.
  """
  stride = window if stride is None else stride
  if impl == "auto":
    impl = "reshape" if _on_cpu() else "xla"
  if impl not in POOL_IMPLS:
    raise ValueError(f"Unknown pool impl {impl!r}.")
  if impl == "reshape" and stride == window:
    return jnp.max(_reshape_windows(x, window), axis=(2, 4))
  return _pool_xla(x, -jnp.inf, lax.max, window, stride)


def avg_pool(x: jax.Array, window: int = 2, stride: Optional[int] = None, *,
             impl: str = "auto") -> jax.Array:
  """Average pooling over NHWC input with VALID padding (see max_pool)."""
  stride = window if stride is None else stride
  if impl == "auto":
    impl = "reshape"
  if impl not in POOL_IMPLS:
    raise ValueError(f"Unknown pool impl {impl!r}.")
  if impl == "reshape" and stride == window:
    return jnp.mean(_reshape_windows(x, window), axis=(2, 4))
  return _pool_xla(x, 0., lax.add, window,
                   stride) / (window * window)


def tune_cpu_malloc() -> bool:
  """Stops glibc from returning large buffers to the OS after every op.

  XLA:CPU allocates each large temporary with ``malloc``; glibc serves
  blocks above ~32 MB with ``mmap`` and unmaps them on ``free``, so every
  call of a jitted function page-faults its big temporaries in again. On
  this VM that made a 61 MB elementwise op 27 ms instead of 4 ms. Disabling
  ``mmap`` for malloc and the heap trim keeps the memory mapped (RSS stays
  at the peak). Equivalent to starting the process with
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``; unlike XLA_FLAGS
  this can be called at any time (it affects later allocations).

  Returns:
    True if glibc accepted the settings, False otherwise (e.g. not glibc).
  """
  from distill_jax.platform import xla_options  # pylint: disable=g-import-not-at-top
  return xla_options.keep_malloc_mapped()
