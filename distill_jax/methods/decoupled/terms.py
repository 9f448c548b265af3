"""Recover loss terms of the decoupled family, built to compose.

A term is a pure function (or a small frozen dataclass with `__call__`)

  term(logits, aux, targets, teacher_stats) -> scalar

  * logits: (N, K) teacher logits of the augmented synthetic batch;
  * aux: the teacher's auxiliary outputs, a dict; `aux["moments"]` is a
    tuple, one (mean (C_l,), biased variance (C_l,)) pair per BN layer, of
    that layer's INPUT over (N, H, W), in forward order. Image priors read
    `aux["inputs"]`, the augmented batch the teacher saw (add it with
    `with_inputs`);
  * targets: (N,) int class indices, or (N, K) probabilities;
  * teacher_stats: the teacher's BN running statistics as a tuple of
    (running mean (C_l,), running var (C_l,)) pairs in the same forward
    order as `aux["moments"]` (`running_stats` builds it from a flax
    `batch_stats` tree and a list of module paths; `bn_call_order` finds
    those paths in call order).

`Terms` is a weighted sum of named terms returning (total, {name: value});
the values are unweighted, for logging. G-VBSM and SC-DD add terms with
`Terms.add`. `sre2l` builds the SRe2L/CDA/DELT objective

  CE(f(A(x)), y) + r_bn * sum_l w_l (||mu_l - mu_l^BN||_2
                                     + ||var_l - var_l^BN||_2)
  (+ tv_l2 * TV_l2 + l2_scale * L2, both off by default),

METHODS.md C.0 item 2 and C.1 (plain, not squared, L2 norms; biased
variance; w_1 = `first_multiplier` = 10, other w_l = 1; the teacher runs in
eval mode, the moments are batch statistics of the BN inputs).
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# ((running mean, running var), ...) in forward order.
RunningStats = tuple[tuple[Array, Array], ...]
Term = Callable[[Array, Mapping[str, Any], Array, Any], Array]


def safe_norm(v: Array) -> Array:
  """Euclidean norm of v (all axes) with gradient 0, not NaN, at v = 0.

  torch.norm's backward also returns 0 there; jnp.linalg.norm gives NaN.
  """
  sq = jnp.sum(jnp.square(v))
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def with_inputs(aux: Mapping[str, Any], inputs: Array) -> dict:
  """A copy of `aux` with `aux["inputs"] = inputs` (for the image priors)."""
  return {**aux, "inputs": inputs}


# ------------------------------------------------------------------ terms.


def ce(logits: Array, aux, targets: Array, teacher_stats=None) -> Array:
  """Cross-entropy of `logits` against `targets`, mean over the batch.

  nn.CrossEntropyLoss() of the recover scripts (METHODS.md C.0 item 2).
  Integer targets (N,) are class indices; float targets (N, K) are
  probabilities (soft CE).
  """
  del aux, teacher_stats
  logp = jax.nn.log_softmax(logits, axis=-1)
  if jnp.issubdtype(targets.dtype, jnp.integer):
    nll = -jnp.take_along_axis(logp, targets[:, None].astype(jnp.int32),
                               axis=-1)[:, 0]
  else:
    nll = -jnp.sum(targets * logp, axis=-1)
  return jnp.mean(nll)


def bn_layer_losses(moments: Sequence[tuple[Array, Array]],
                    running: Sequence[tuple[Array, Array]]) -> Array:
  """Per-layer ||mu_l - mu_l^BN||_2 + ||var_l - var_l^BN||_2, shape (L,).

  SRe2L's `BNFeatureHook.r_feature` (METHODS.md C.0 item 2): plain L2
  norms, not squared; `moments` must hold the biased variance.

  Raises:
    ValueError: the two sequences differ in length or a layer's shapes
      differ (a sign that the running statistics are not in forward order).
  """
  moments, running = tuple(moments), tuple(running)
  if len(moments) != len(running):
    raise ValueError(
        f"{len(moments)} BN moments but {len(running)} running statistics; "
        "they must list the same BN layers in forward order.")
  if not moments:
    raise ValueError("no BN layers: the teacher has nothing to match.")
  out = []
  for l, ((mu, var), (rm, rv)) in enumerate(zip(moments, running)):
    if mu.shape != rm.shape or var.shape != rv.shape:
      raise ValueError(
          f"BN layer {l}: moments have shapes {mu.shape}, {var.shape} but "
          f"running statistics {rm.shape}, {rv.shape}; are both in forward "
          "order?")
    out.append(safe_norm(mu - rm) + safe_norm(var - rv))
  return jnp.stack(out)


def layer_weights(num_layers: int, first_multiplier: float) -> Array:
  """(first_multiplier, 1, ..., 1): SRe2L's `rescale` (METHODS.md C.0)."""
  return jnp.asarray([first_multiplier] + [1.0] * (num_layers - 1))


@dataclasses.dataclass(frozen=True)
class BNMatch:
  """sum_l w_l (||mu_l - mu_l^BN||_2 + ||var_l - var_l^BN||_2).

  Reads `aux["moments"]` and takes `teacher_stats` as the running
  statistics, a tuple of (mean, var) pairs in the same forward order
  (METHODS.md C.0 item 2, C.6 item 1). w_1 = first_multiplier, w_l = 1
  for l > 1.
  """
  first_multiplier: float = 10.0

  def __call__(self, logits, aux, targets, teacher_stats) -> Array:
    del logits, targets
    losses = bn_layer_losses(aux["moments"], teacher_stats)
    w = layer_weights(losses.shape[0], self.first_multiplier)
    return jnp.sum(w.astype(losses.dtype) * losses)


def bn_match(first_multiplier: float = 10.0) -> BNMatch:
  """The BN-statistics matching term (see `BNMatch`); SRe2L default x10."""
  return BNMatch(first_multiplier=first_multiplier)


def tv_l2(logits, aux, targets, teacher_stats=None) -> Array:
  """SRe2L's `loss_var_l2` prior on `aux["inputs"]` (N, H, W, C).

  ||d1|| + ||d2|| + ||d3|| + ||d4|| (Frobenius norms over the whole batch)
  of the horizontal, vertical and two diagonal neighbour differences
  (`get_image_prior_losses`; flag `--tv-l2`, 0 in the scripts, METHODS.md
  C.1).
  """
  del logits, targets, teacher_stats
  x = aux["inputs"]
  d1 = x[:, :, :-1, :] - x[:, :, 1:, :]
  d2 = x[:, :-1, :, :] - x[:, 1:, :, :]
  d3 = x[:, 1:, :-1, :] - x[:, :-1, 1:, :]
  d4 = x[:, :-1, :-1, :] - x[:, 1:, 1:, :]
  return safe_norm(d1) + safe_norm(d2) + safe_norm(d3) + safe_norm(d4)


def l2(logits, aux, targets, teacher_stats=None) -> Array:
  """Mean over images of each image's L2 norm, on `aux["inputs"]`.

  SRe2L's `loss_l2` (flag `--l2-scale`, 0 in the scripts, METHODS.md C.1).
  """
  del logits, targets, teacher_stats
  x = aux["inputs"]
  return jnp.mean(jax.vmap(safe_norm)(x))


# -------------------------------------------------------------- combinator.


@dataclasses.dataclass(frozen=True)
class Terms:
  """Weighted sum of named terms.

  `entries` is a tuple of (name, weight, term). Calling returns
  (sum_i weight_i * term_i(...), {name_i: term_i(...)}) with the UNWEIGHTED
  values in the dict (for logging). Weights may be floats or arrays (e.g. a
  traced schedule value).
  """
  entries: tuple[tuple[str, Any, Term], ...] = ()

  def __post_init__(self):
    names = [e[0] for e in self.entries]
    if len(set(names)) != len(names):
      raise ValueError(f"term names must be unique, got {names}.")

  def add(self, name: str, term: Term, weight: Any = 1.0) -> "Terms":
    """A new `Terms` with (name, weight, term) appended."""
    return Terms(self.entries + ((name, weight, term),))

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(e[0] for e in self.entries)

  def __call__(self, logits, aux, targets,
               teacher_stats) -> tuple[Array, dict[str, Array]]:
    if not self.entries:
      raise ValueError("Terms has no terms.")
    values, total = {}, 0.0
    for name, weight, term in self.entries:
      v = term(logits, aux, targets, teacher_stats)
      values[name] = v
      total = total + weight * v
    return total, values


def sre2l(r_bn: float = 0.01, first_multiplier: float = 10.0,
          tv_l2_weight: float = 0.0, l2_weight: float = 0.0) -> Terms:
  """CE + r_bn * bn_match (+ the priors when their weights are nonzero).

  SRe2L/CDA/DELT recover (METHODS.md C.1, C.2, C.5): r_bn 0.01 on
  ImageNet-1K and CIFAR-100, 1 on Tiny (SRe2L), 0.05 on Tiny (CDA);
  `--tv-l2`, `--l2-scale` are 0 in the scripts. Term names: "ce", "bn",
  "tv_l2", "l2".
  """
  t = Terms().add("ce", ce).add("bn", bn_match(first_multiplier), r_bn)
  if tv_l2_weight:
    t = t.add("tv_l2", tv_l2, tv_l2_weight)
  if l2_weight:
    t = t.add("l2", l2, l2_weight)
  return t


# ------------------------------------------------ running stats from flax.


def running_stats(batch_stats: Mapping[str, Any],
                  paths: Sequence[Sequence[str]]) -> RunningStats:
  """((mean, var), ...) of the BN layers at `paths`, in the order given.

  Args:
    batch_stats: a flax `variables["batch_stats"]` tree; the module at
      path p holds `{"mean": (C,), "var": (C,)}` (flax `nn.BatchNorm`).
    paths: module paths (tuples of names) in FORWARD order, e.g. from
      `bn_call_order`. The order is not recovered from the tree itself: jax
      flattens dicts by sorted key ("BatchNorm_10" < "BatchNorm_2"), and
      sorting breaks nested models.

  Raises:
    KeyError: a path is missing or lacks "mean"/"var".
  """
  out = []
  for p in paths:
    node = batch_stats
    for k in p:
      if k not in node:
        raise KeyError(f"batch_stats has no module {'/'.join(p)!r} "
                       f"(missing {k!r}; keys {list(node)}).")
      node = node[k]
    if "mean" not in node or "var" not in node:
      raise KeyError(f"module {'/'.join(p)!r} has no mean/var batch stats "
                     f"(keys {list(node)}).")
    out.append((node["mean"], node["var"]))
  return tuple(out)


def bn_call_order(model: nn.Module, variables, *args,
                  **kwargs) -> tuple[tuple[str, ...], ...]:
  """Paths of the modules that own BN running stats, in call order.

  Traces `model.apply(variables, *args, **kwargs)` abstractly
  (`jax.eval_shape`, nothing is computed) while intercepting every module
  `__call__`; a module counts as a BN layer if it is an `nn.BatchNorm` or
  owns `batch_stats` variables "mean" and "var". A module called twice is
  listed twice, matching a hook that fires on each call. Pass the same
  arguments as the recover forward (e.g. `x, train=False`); they are
  closed over, so Python flags stay static.
  """
  order = []

  def interceptor(next_fun, iargs, ikwargs, context):
    mod = context.module
    if context.method_name == "__call__" and (
        isinstance(mod, nn.BatchNorm) or (
            mod.has_variable("batch_stats", "mean")
            and mod.has_variable("batch_stats", "var"))):
      order.append(tuple(str(k) for k in mod.path))
    return next_fun(*iargs, **ikwargs)

  def run(v):
    with nn.intercept_methods(interceptor):
      return model.apply(v, *args, **kwargs)

  jax.eval_shape(run, variables)
  return tuple(order)
