"""G-VBSM's recover loss terms, composing with `terms.Terms`.

G-VBSM (METHODS.md C.4, C.6 item 8, C.8 item 3) matches, for each teacher
of a heterogeneous pool:

  * the BN-input moments, as `terms.BNMatch` does, but through an EMA of the
    batch statistics with a straight-through gradient: the state is
    m_t = alpha m_{t-1} + (1 - alpha) mu_t and the matched value is
    m_t + mu_t - sg(mu_t) (value: the EMA; gradient: the current batch's);
  * the statistics of every conv input (of every linear input for an MLP):
    channel mean and variance, and the mean and variance of each cell of a
    grid of 4x4 patches (pooled over batch, channels and the 16 pixels;
    maps bilinearly resized up to a multiple of 4), through the same EMA
    rule, against targets from one pass over the real training data
    (`hook_stats`); each hook's loss is dropped with probability
    `drop_rate` (`drop_mask`); the first hook (the first conv's input, the
    pixels) weighs `first_multiplier` (C.8 item 3: the x10 is not on a BN);
  * data densification: per class, the eigenvalues lambda of the Gram
    matrix X_y X_y^T of the augmented images (flattened, average-pooled to
    at most 32x32), sum_y KL(sg(softmax(lambda / tau)) || softmax(lambda)),
    with `jnp.linalg.eigvalsh` (the matrix is symmetric PSD) and `xlogy`
    (finite when softmax(lambda / tau) underflows, e.g. 50 images a class).

The EMA state is explicit: `straight_through(state, stats, alpha)` returns
the matched values and the new state, which the recover step carries in its
learned state (`gvbsm.GvbsmStep`). `prepare` puts the matched values, the
conv targets and the drop mask into `aux` so that the terms keep the
`terms` signature `term(logits, aux, targets, teacher_stats)`.
"""

import dataclasses

import jax
import jax.numpy as jnp

from distill_jax.methods.decoupled import terms as terms_lib

PATCH = 4
GRAM_SIDE = 32


def _patch_grid(x):
  """(N, H', W', C) with H', W' the multiples of PATCH at or above H, W."""
  n, h, w, c = x.shape
  hh, ww = -(-h // PATCH) * PATCH, -(-w // PATCH) * PATCH
  if (hh, ww) != (h, w):
    x = jax.image.resize(x, (n, hh, ww, c), "linear")
  return x.reshape(n, hh // PATCH, PATCH, ww // PATCH, PATCH, c)


def hook_stats(x) -> tuple:
  """(channel mean, channel var, patch mean, patch var) of a hook input.

  x (N, H, W, C): channel statistics over (N, H, W); patch statistics per
  cell of the 4x4-patch grid over (N, 16 pixels, C), flattened (cells,).
  x (N, D): per-feature statistics over N and empty patch statistics.
  Variances are biased.
  """
  if x.ndim == 2:
    empty = jnp.zeros((0,), x.dtype)
    return jnp.mean(x, 0), jnp.var(x, 0), empty, empty
  g = _patch_grid(x)
  axes = (0, 2, 4, 5)
  return (jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2)),
          jnp.mean(g, axes).reshape(-1), jnp.var(g, axes).reshape(-1))


def straight_through(state, stats, alpha: float):
  """(matched values, new state) of the EMA rule, leaf by leaf.

  new = alpha * state + (1 - alpha) * stat (no gradient); matched value
  new + stat - sg(stat): its value is the EMA, its gradient that of stat.
  """
  sg = jax.lax.stop_gradient
  new = jax.tree.map(lambda p, c: sg(alpha * p + (1.0 - alpha) * c), state,
                     stats)
  return jax.tree.map(lambda n, c: n + c - sg(c), new, stats), new


def drop_mask(key, num_hooks: int, rate: float):
  """(num_hooks,) 1.0 for the hooks kept, 0.0 for those dropped (p=rate)."""
  if rate <= 0:
    return jnp.ones((num_hooks,), jnp.float32)
  return jax.random.bernoulli(key, 1.0 - rate,
                              (num_hooks,)).astype(jnp.float32)


def init_state(running, conv_targets) -> dict:
  """The EMA state before the first step: the targets themselves."""
  return {"bn": tuple(tuple(p) for p in running),
          "conv": tuple(tuple(t) for t in conv_targets)}


def prepare(aux, state, conv_targets, keep, alpha: float):
  """(aux with the matched statistics, new EMA state).

  aux["moments"] becomes the straight-through BN moments, and
  aux["conv_stats"], aux["conv_targets"], aux["conv_keep"] are added.
  """
  stats = {"bn": tuple(tuple(m) for m in aux["moments"]),
           "conv": tuple(hook_stats(x) for x in aux["conv_inputs"])}
  values, new = straight_through(state, stats, alpha)
  out = {**aux, "moments": values["bn"], "conv_stats": values["conv"],
         "conv_targets": tuple(conv_targets), "conv_keep": keep}
  return out, new


@dataclasses.dataclass(frozen=True)
class BNMatchOrZero:
  """`terms.BNMatch`, or 0 for a teacher without BN (IN ConvNet, MLP)."""
  first_multiplier: float = 1.0

  def __call__(self, logits, aux, targets, teacher_stats):
    if not aux["moments"]:
      return jnp.zeros((), logits.dtype)
    return terms_lib.BNMatch(self.first_multiplier)(logits, aux, targets,
                                                    teacher_stats)


@dataclasses.dataclass(frozen=True)
class ConvMatch:
  """sum_l w_l keep_l sum_k ||target_lk - value_lk||_2 over the conv hooks.

  k runs over the four statistics of `hook_stats`; w_1 = first_multiplier,
  w_l = 1 otherwise; keep_l = aux["conv_keep"][l].
  """
  first_multiplier: float = 10.0

  def __call__(self, logits, aux, targets, teacher_stats):
    del logits, targets, teacher_stats
    values, tgts = aux["conv_stats"], aux["conv_targets"]
    if len(values) != len(tgts):
      raise ValueError(f"{len(values)} conv hooks but {len(tgts)} targets; "
                       "recompute the real statistics for this teacher.")
    losses = jnp.stack([sum(terms_lib.safe_norm(t - v)
                            for v, t in zip(vals, tg))
                        for vals, tg in zip(values, tgts)])
    w = terms_lib.layer_weights(losses.shape[0], self.first_multiplier)
    return jnp.sum(w * aux["conv_keep"] * losses)


def gram_inputs(x, side: int = GRAM_SIDE):
  """(N, D): images average-pooled to at most side x side, flattened."""
  n, h, w, c = x.shape
  if h > side or w > side:
    fh, fw = -(-h // side), -(-w // side)
    x = x[:, :h // fh * fh, :w // fw * fw]
    x = x.reshape(n, h // fh, fh, w // fw, fw, c).mean((2, 4))
  return x.reshape(n, -1)


def gram_kl(x_group, tau: float):
  """KL(sg(softmax(lambda / tau)) || softmax(lambda)) of one class's
  (B_y, D) rows, lambda the eigenvalues of the Gram matrix."""
  lam = jnp.linalg.eigvalsh(x_group @ x_group.T)
  p = jax.lax.stop_gradient(jax.nn.softmax(lam / tau))
  logq = jax.nn.log_softmax(lam)
  return jnp.sum(jax.scipy.special.xlogy(p, p) - p * logq)


@dataclasses.dataclass(frozen=True)
class GramSpectrum:
  """G-VBSM's data densification on class-grouped batches.

  The batch (aux["inputs"], N images) holds N / group_size classes of
  `group_size` consecutive images each (`recover.batches`, class_grouped);
  the value is the sum over those classes of `gram_kl`.
  """
  group_size: int
  tau: float = 4.0

  def __call__(self, logits, aux, targets, teacher_stats):
    del logits, targets, teacher_stats
    x = gram_inputs(aux["inputs"])
    n = x.shape[0]
    if n % self.group_size:
      raise ValueError(f"recover batch of {n} images is not whole classes "
                       f"of {self.group_size}; use class_grouped batches.")
    groups = x.reshape(n // self.group_size, self.group_size, -1)
    return jnp.sum(jax.vmap(lambda g: gram_kl(g, self.tau))(groups))


def objective(*, r_bn: float, first_multiplier: float, nuc_norm: float,
              tau: float, group_size: int) -> terms_lib.Terms:
  """CE + r_bn (BN + conv statistics) + nuc_norm * data densification.

  Term names "ce", "bn", "conv", "dd"; C.4's L = CE + r_loss sum_l w_l R_l
  + nuc_norm L_DD.
  """
  t = terms_lib.Terms().add("ce", terms_lib.ce)
  t = t.add("bn", BNMatchOrZero(1.0), r_bn)
  t = t.add("conv", ConvMatch(first_multiplier), r_bn)
  return t.add("dd", GramSpectrum(group_size, tau), nuc_norm)
