"""The outer (meta) update: one pure step on the learned distilled data.

`make_step(grad_fn, tx, ...)` turns any function returning a loss and a
gradient w.r.t. the learned pytree into the outer step: optional clipping of
the image gradient (RaT-BPTT, B.3), the optax update, optional per-image
update scales (Boost-DD "slow"), and soft labels kept non-negative. The
bilevel methods pass the meta-gradient (`distill_jax.core.meta`); any other
loss over learned images (e.g. a recover loss) can reuse the same step.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class OuterState:
  """Everything the outer loop carries between steps.

  Attributes:
    learned: the learned distilled quantities ({"x", "raw_lr"?, "y"?}).
    opt_state: optax state of the outer optimiser.
    clip_ema: EMA of the image-gradient norm (-1 until the first step).
    step: number of outer steps taken (int32 scalar).
  """
  learned: dict
  opt_state: Any
  clip_ema: jax.Array
  step: jax.Array


def init_state(learned, tx: optax.GradientTransformation) -> OuterState:
  return OuterState(learned=learned, opt_state=tx.init(learned),
                    clip_ema=-jnp.ones((), jnp.float32),
                    step=jnp.zeros((), jnp.int32))


def optimizer(lr: float, *, b1: float, b2: float, eps: float = 1e-8,
              decay_steps: int = 0, decay_factor: float = 1.0,
              learn_lr: bool = True,
              label_lr_scale: float = 1.0) -> optax.GradientTransformation:
  """Adam on the learned data, with the reference setups as options.

  Args:
    lr: outer learning rate.
    b1: Adam first-moment decay.
    b2: Adam second-moment decay.
    eps: Adam epsilon.
    decay_steps: > 0: lr x `decay_factor` every `decay_steps` steps
      (Dataset Distillation's step decay); 0: constant.
    decay_factor: the step-decay factor.
    learn_lr: False freezes learned["raw_lr"] (its update is zero).
    label_lr_scale: learned soft labels ("y") use lr / label_lr_scale.

  Returns:
    An optax transformation over the learned dict.
  """
  def adam(rate):
    if decay_steps > 0:
      rate = optax.exponential_decay(rate, transition_steps=decay_steps,
                                     decay_rate=decay_factor, staircase=True)
    return optax.adam(rate, b1=b1, b2=b2, eps=eps)

  def group(k):
    if k == "raw_lr" and not learn_lr:
      return "freeze"
    return "y" if k == "y" else "x"
  return optax.multi_transform(
      {"x": adam(lr), "y": adam(lr / label_lr_scale),
       "freeze": optax.set_to_zero()},
      lambda learned: {k: group(k) for k in learned})


def clip_by_ema(grad: jax.Array, ema: jax.Array, coef: float):
  """RaT-BPTT image-gradient clipping (B.3).

  e <- n on the first call (ema < 0), else c e + (1 - c) n, with n the
  unclipped global norm; then the gradient is clipped to norm <= 2 e.

  Returns:
    (clipped gradient, new ema, n).
  """
  n = jnp.sqrt(jnp.sum(jnp.square(grad)))
  ema = jnp.where(ema < 0, n, coef * ema + (1.0 - coef) * n)
  scale = jnp.minimum(1.0, 2.0 * ema / (n + 1e-6))
  return grad * scale, ema, n


def make_step(grad_fn: Callable, tx: optax.GradientTransformation, *,
              clip_coef: float = 0.0, x_scale=None,
              project: Callable | None = None) -> Callable:
  """The outer step `step(state, *args) -> (state, metrics)`.

  Args:
    grad_fn: `grad_fn(learned, step, *args) -> (loss, grads, metrics)` with
      `grads` shaped like `learned` and `metrics` a dict of scalars.
    tx: the outer optimiser (`optimizer`).
    clip_coef: > 0 clips the image gradient at 2x an EMA (coefficient
      `clip_coef`) of its norm (`clip_by_ema`); 0 disables clipping.
    x_scale: optional (C, P) scale of each learned image's (and soft
      label's) update (Boost-DD "slow": beta on earlier blocks).

  Returns:
    The pure step; metrics hold "loss", "grad_norm" (the image gradient's
    norm before clipping), "clip_ema" and whatever `grad_fn` adds. (The
    host loop checks finiteness where it syncs anyway, `run.guard`.)
  """
  def step(state: OuterState, *args):
    loss, grads, extra = grad_fn(state.learned, state.step, *args)
    ema, gnorm = state.clip_ema, optax.tree.norm(grads["x"])
    if clip_coef > 0:
      gx, ema, gnorm = clip_by_ema(grads["x"], ema, clip_coef)
      grads = {**grads, "x": gx}
    updates, opt_state = tx.update(grads, state.opt_state, state.learned)
    if x_scale is not None:
      updates = {**updates,
                 "x": updates["x"] * x_scale[:, :, None, None, None]}
      if "y" in updates:
        updates["y"] = updates["y"] * x_scale[:, :, None]
    learned = optax.apply_updates(state.learned, updates)
    if "y" in learned:
      learned = {**learned, "y": jnp.maximum(learned["y"], 0.0)}
    if project is not None:
      learned = project(learned)
    metrics = {"loss": loss, "grad_norm": gnorm, "clip_ema": ema,
               **extra}
    return OuterState(learned, opt_state, ema, state.step + 1), metrics
  return step
