"""Float64 finite-difference checks of gradients, with a built-in power test.

`check_directional(f, params, grad, key=...)` compares `grad` (the gradient
of the scalar `f` at `params`, computed by the code under test) with central
differences of `f` along random unit directions v of the whole pytree (and,
when it has several leaves, of each leaf alone):

  |(f(p + eps v) - f(p - eps v)) / (2 eps) - <grad, v>|
      <= rtol * ||grad_scope|| + atol,

with ||grad_scope|| the norm of the gradient restricted to the direction's
support. The tolerance is scaled to the gradient's norm, not to the size of
the argument, so a zeroed, negated or halved gradient fails;
`check_with_mutations` asserts exactly that, so the power of every test is
part of the suite.

Everything runs in float64: the checks must be called under
`jax.enable_x64(True)`, and `assert_float64` walks the program of `f` and
fails if any value that depends on `params` is computed in a narrower float
type (a float32 leaf would hide in the finite-difference noise).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

EPS = 1e-6
RTOL = 1e-4
ATOL = 1e-10


def to_f64(tree):
  """Casts every floating leaf of `tree` to float64 (others unchanged)."""
  _require_x64()

  def cast(a):
    if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
      return jnp.asarray(a, jnp.float64)
    return a
  return jax.tree.map(cast, tree)


def _require_x64():
  if not jax.config.jax_enable_x64:
    raise AssertionError("gradcheck needs float64: run the test under "
                         "`with jax.enable_x64(True):`.")


# ---------------------------------------------------------------- float64.


def _sub_jaxprs(eqn):
  """The Jaxprs found in the parameters of `eqn`."""
  out = []
  for v in eqn.params.values():
    for j in (v if isinstance(v, (tuple, list)) else (v,)):
      if isinstance(j, jex.ClosedJaxpr):
        out.append(j.jaxpr)
      elif isinstance(j, jex.Jaxpr):
        out.append(j)
  return out


def _walk(jaxpr, tainted_in, bad):
  """Propagates "depends on params" through `jaxpr`; returns tainted outs.

  Every tainted variable whose dtype is a float narrower than float64 is
  added to `bad` as (primitive, dtype).
  """
  tainted = {v for v, t in zip(jaxpr.invars, tainted_in) if t}

  def is_t(v):
    return isinstance(v, jex.Var) and v in tainted
  for eqn in jaxpr.eqns:
    ins = [is_t(v) for v in eqn.invars]
    subs = _sub_jaxprs(eqn)
    if not subs or not any(ins):
      outs = [any(ins)] * len(eqn.outvars)
    else:
      outs = [False] * len(eqn.outvars)
      for sub in subs:
        outs = [a or b for a, b in zip(outs, _walk_sub(eqn, sub, ins, bad))]
    for v, t in zip(eqn.outvars, outs):
      if t:
        tainted.add(v)
        dt = v.aval.dtype
        if jnp.issubdtype(dt, jnp.floating) and dt != jnp.float64:
          bad.append((eqn.primitive.name, str(dt)))
  return [is_t(v) for v in jaxpr.outvars]


def _fixed_point(sub, sub_in, lo, hi, bad):
  """Walks a loop body whose inputs [lo:hi] are fed by its first outputs."""
  while True:
    outs = _walk(sub, sub_in, bad)
    new = list(sub_in)
    new[lo:hi] = [a or b for a, b in zip(sub_in[lo:hi], outs[:hi - lo])]
    if new == sub_in:
      return outs
    sub_in = new


def _walk_sub(eqn, sub, ins, bad):
  """Taint of `eqn`'s outputs through one of its sub-programs."""
  name, prm = eqn.primitive.name, eqn.params
  n_out = len(eqn.outvars)
  if name == "scan":  # (consts, carry, xs) -> (carry, ys).
    lo = prm["num_consts"]
    return _fixed_point(sub, ins, lo, lo + prm["num_carry"], bad)
  if name == "while":  # (cond consts, body consts, carry) -> carry.
    nc, nb = prm["cond_nconsts"], prm["body_nconsts"]
    carry = ins[nc + nb:]
    if sub is prm["body_jaxpr"].jaxpr:
      return _fixed_point(sub, ins[nc:], nb, nb + len(carry), bad)
    _walk(sub, ins[:nc] + [any(ins)] * len(carry), bad)  # the predicate.
    return [any(ins)] * n_out
  if name == "cond":  # (index, operands) -> outs, per branch.
    outs = _walk(sub, [t or ins[0] for t in ins[1:]], bad)
    return [t or ins[0] for t in outs]
  if len(sub.invars) == len(ins):  # jit, remat, custom_jvp/vjp: positional.
    outs = _walk(sub, ins, bad)
    return outs if len(outs) == n_out else [any(outs)] * n_out
  _walk(sub, [True] * len(sub.invars), bad)  # unknown: conservative.
  return [True] * n_out


def assert_float64(f: Callable, params) -> None:
  """Fails if `f(params)` computes a params-dependent value below float64."""
  _require_x64()
  leaves = jax.tree.leaves(params)
  narrow = [str(a.dtype) for a in leaves if a.dtype != jnp.float64]
  if narrow:
    raise AssertionError(f"params have dtypes {sorted(set(narrow))}; cast "
                         "them with gradcheck.to_f64.")
  closed = jax.make_jaxpr(lambda *ls: f(jax.tree.unflatten(
      jax.tree.structure(params), ls)))(*leaves)
  bad = []
  _walk(closed.jaxpr, [True] * len(leaves), bad)
  bad = sorted(set(bad))
  out = closed.out_avals
  if len(out) != 1 or out[0].shape != () or out[0].dtype != jnp.float64:
    raise AssertionError(f"f must return a float64 scalar, got {out}.")
  if bad:
    raise AssertionError(
        f"values that depend on params are not float64: {bad[:5]} "
        "(primitive, dtype); build the model, data "
        "and constants in float64 (gradcheck.to_f64) under jax.enable_x64.")


def assert_float64_grad(value_and_grad_fn: Callable, params) -> None:
  """`assert_float64` for the program computing (value, gradient)."""
  def total(p):
    return sum(jnp.sum(a) for a in jax.tree.leaves(value_and_grad_fn(p)))
  assert_float64(total, params)


# ---------------------------------------------------------------- checks.


@dataclasses.dataclass(frozen=True)
class Probe:
  """One direction: its scope (leaf path or "all"), v, and the FD slope."""
  scope: str
  v: Any
  fd: float


@dataclasses.dataclass(frozen=True)
class Result:
  """Outcome of comparing one gradient with a set of probes.

  ratios: |fd - <g, v>| / tol per probe (> 1 fails); norm: ||g||.
  """
  ratios: tuple[float, ...]
  norm: float
  message: str

  @property
  def ok(self) -> bool:
    return not self.message

  @property
  def worst(self) -> float:
    return max(self.ratios)


def _scopes(params):
  """("all", None), then (path, leaf index) for each leaf if several."""
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  scopes = [("all", None)]
  if len(paths) > 1:
    scopes += [(p, i) for i, p in enumerate(paths)]
  return scopes


def probes(f: Callable, params, *, key: jax.Array, num_dirs: int = 3,
           eps: float = EPS) -> list[Probe]:
  """Central-difference slopes of `f` at `params` along random unit
  directions: `num_dirs` over the whole pytree and, if it has several
  leaves, `num_dirs` within each leaf alone."""
  if num_dirs < 1 or not eps > 0:
    raise ValueError(f"need num_dirs >= 1 and eps > 0, got {num_dirs}, {eps}.")
  assert_float64(f, params)
  leaves, treedef = jax.tree.flatten(params)
  fj = jax.jit(f)
  out = []
  for s, (scope, only) in enumerate(_scopes(params)):
    for d in range(num_dirs):
      ks = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, s), d),
                            len(leaves))
      vs = [jax.random.normal(k, a.shape, jnp.float64) if only in (None, i)
            else jnp.zeros_like(a) for i, (k, a) in enumerate(zip(ks, leaves))]
      norm = jnp.sqrt(sum(jnp.sum(v * v) for v in vs))
      vs = [v / norm for v in vs]
      shift = [jax.tree.unflatten(treedef, [a + sgn * eps * v for a, v in
                                            zip(leaves, vs)])
               for sgn in (1.0, -1.0)]
      fd = (float(fj(shift[0])) - float(fj(shift[1]))) / (2 * eps)
      out.append(Probe(scope, jax.tree.unflatten(treedef, vs), fd))
  return out


def compare(grad, prbs: list[Probe], *, rtol: float = RTOL,
            atol: float = ATOL) -> Result:
  """Compares `grad` with the probes' slopes (see the module docstring)."""
  _require_x64()
  gl = jax.tree.leaves(grad)
  narrow = sorted({str(g.dtype) for g in gl if g.dtype != jnp.float64})
  if narrow:
    return Result((float("inf"),), float("nan"),
                  f"gradient has dtypes {narrow}, not float64.")
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(grad)[0]]
  leaf_norms = {p: float(jnp.sqrt(jnp.sum(jnp.square(g))))
                for p, g in zip(paths, gl)}
  norm = float(np.sqrt(sum(n * n for n in leaf_norms.values())))
  ratios, fails, scopes = [], [], []
  for i, pr in enumerate(prbs):
    if jax.tree.structure(pr.v) != jax.tree.structure(grad):
      raise AssertionError("gradient and params have different pytree "
                           f"structures: {jax.tree.structure(grad)} vs "
                           f"{jax.tree.structure(pr.v)}.")
    dot = float(sum(jnp.sum(g * v) for g, v in zip(gl, jax.tree.leaves(
        pr.v))))
    scale = norm if pr.scope == "all" else leaf_norms[pr.scope]
    tol = rtol * scale + atol
    err = abs(pr.fd - dot)
    ratios.append(err / tol)
    if not err <= tol:
      scopes.append(pr.scope)
      fails.append(f"direction {i} ({pr.scope}): fd={pr.fd:.6g} "
                   f"<g,v>={dot:.6g} |diff|={err:.3g} > tol={tol:.3g} "
                   f"(rtol {rtol:g} x ||g_{pr.scope}||={scale:.3g})")
  msgs = []
  if not norm > 0:
    msgs.append(f"the gradient is zero (||g||={norm})")
  if fails:
    msgs.append(f"it disagrees with float64 central differences along "
                f"{len(fails)} of {len(prbs)} random directions (scopes "
                f"{', '.join(dict.fromkeys(scopes))}), first: {fails[0]}")
  msg = ("; ".join(msgs) + "; the gradient is wrong, or eps/rtol do not suit "
         "this function.") if msgs else ""
  return Result(tuple(ratios), norm, msg)


def check_directional(f: Callable, params, grad, *, key: jax.Array,
                      num_dirs: int = 3, eps: float = EPS, rtol: float = RTOL,
                      atol: float = ATOL) -> Result:
  """Asserts that `grad` is the gradient of `f` at `params` (float64 FD).

  Args:
    f: scalar function of the pytree `params` (float64 throughout).
    params: the point (float64 leaves).
    grad: the gradient under test, a pytree like `params`.
    key: PRNG key of the random directions.
    num_dirs: directions per scope (whole pytree, then each leaf).
    eps: central-difference step.
    rtol: tolerance relative to the norm of the gradient in the scope.
    atol: absolute floor of the tolerance (finite-difference round-off).

  Returns:
    The `Result` (its ratios are the margins).

  Raises:
    AssertionError: the gradient is zero or disagrees along a direction.
  """
  res = compare(grad, probes(f, params, key=key, num_dirs=num_dirs, eps=eps),
                rtol=rtol, atol=atol)
  if not res.ok:
    raise AssertionError("gradient check failed: " + res.message)
  return res


def mutations(grad) -> dict:
  """Wrong gradients a useful check must reject: zeroed, negated, halved,
  and (for several leaves) each leaf zeroed alone."""
  out = {"zeroed": jax.tree.map(jnp.zeros_like, grad),
         "negated": jax.tree.map(jnp.negative, grad),
         "halved": jax.tree.map(lambda g: 0.5 * g, grad)}
  flat, treedef = jax.tree_util.tree_flatten_with_path(grad)
  if len(flat) > 1:
    for i, (path, _) in enumerate(flat):
      leaves = [jnp.zeros_like(g) if j == i else g
                for j, (_, g) in enumerate(flat)]
      out[f"zeroed{jax.tree_util.keystr(path)}"] = jax.tree.unflatten(
          treedef, leaves)
  return out


def check_with_mutations(f: Callable, params, grad, *, key: jax.Array,
                         num_dirs: int = 3, eps: float = EPS,
                         rtol: float = RTOL, atol: float = ATOL) -> dict:
  """`check_directional` on `grad`, and asserts it rejects every mutation.

  The finite differences are computed once and shared by all comparisons.

  Returns:
    {"true": worst ratio of the true gradient (< 1), mutation name: its
    worst ratio (> 1)}.

  Raises:
    AssertionError: the true gradient fails, or a mutation passes (the
      check has no power against it: lower rtol or add directions).
  """
  prbs = probes(f, params, key=key, num_dirs=num_dirs, eps=eps)
  res = compare(grad, prbs, rtol=rtol, atol=atol)
  if not res.ok:
    raise AssertionError("gradient check failed: " + res.message)
  margins = {"true": res.worst}
  for name, bad in mutations(grad).items():
    r = compare(bad, prbs, rtol=rtol, atol=atol)
    if r.ok:
      raise AssertionError(
          f"the check accepted the {name} gradient (worst ratio "
          f"{r.worst:.3g}): it has no power against it; lower rtol or add "
          "directions.")
    margins[name] = r.worst
  return margins
