"""The one routine that trains fresh networks.

Replay and retrain evaluation of a distilled set (`eval.replay`), RaT-BPTT's
step budgets (`methods.rat_budgets`), pretrained pools (`run.train_pool`) and the
baselines all train networks from scratch with `fit`. What differs between
them is a `Trainer`: how one network's state starts and what one step does.

.. math::
  s_0 = \\mathrm{init}(p_i), \\qquad s_{t+1} = \\mathrm{step}(s_t, t, p_i)

for each network i with its own inputs p_i (an initialisation or init key,
PRNG keys for its batches). `fit` runs the steps in segments that end at the
requested budgets and returns the parameters after each one, so several
budgets cost one run of the longest. Networks run side by side under
`jax.vmap` or one after another under `lax.map` (`parallel`): the same
results up to float summation order, at different memory and speed (on
XLA:CPU `lax.map` keeps one network's activations; BUILD.md, Benchmarks).

`fit` is traceable: callers jit it with their own static arguments.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax.core import inner
from distill_jax.core import unroll
from distill_jax.platform import mesh as sharding

PARALLEL = ("vmap", "map")


class Trainer(NamedTuple):
  """How one fresh network is trained.

  Attributes:
    init: `per_net -> state`, the state before step 0.
    step: `(state, t, per_net) -> state`, inner step t (t is traced).
    output: `state -> pytree` recorded at each budget (default: the params).
  """
  init: Callable[[Any], Any]
  step: Callable[[Any, jax.Array, Any], Any]
  output: Callable[[Any], Any] = lambda state: state.params


def _bounds(budgets: Sequence[int]) -> np.ndarray:
  budgets = [int(b) for b in budgets]
  if not budgets or budgets[0] < 0 or any(
      b <= a for a, b in zip(budgets, budgets[1:])):
    raise ValueError(f"budgets={budgets} must be increasing and >= 0.")
  return np.stack([np.array([0, *budgets[:-1]]), np.array(budgets)],
                  1).astype(np.int32)


def fit(trainer: Trainer, per_net, budgets: Sequence[int], *,
        parallel: str = "vmap"):
  """Trains one network per leading entry of `per_net`.

  Args:
    trainer: the `Trainer`.
    per_net: pytree whose leaves have a leading network axis K.
    budgets: increasing step counts at which the output is recorded.
    parallel: "vmap" (networks side by side) or "map" (one after another).

  Returns:
    `trainer.output` after each budget, leaves shaped (len(budgets), K, ...).
  """
  if parallel not in PARALLEL:
    raise ValueError(f"parallel={parallel!r}; choose one of {PARALLEL}.")
  bounds = jnp.asarray(_bounds(budgets))

  def one(p):
    def segment(state, lo_hi):
      state = jax.lax.fori_loop(lo_hi[0], lo_hi[1],
                                lambda t, s: trainer.step(s, t, p), state)
      return state, trainer.output(state)
    _, out = jax.lax.scan(segment, trainer.init(p), bounds)
    return out

  if parallel == "vmap":
    out = jax.vmap(one)(per_net)
  else:
    out = jax.lax.map(one, per_net)
  return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)


def distilled(problem, learned, fixed, init_fn=None) -> Trainer:
  """Trains on a distilled set with its inner problem (`core.meta.Problem`).

  Step t is the step of distillation itself (`core.unroll.make_step`): the
  schedule's batch of step t (ordered steps for DD, a class-balanced
  subsample for RaT-BPTT), its augmentation and the inner optimiser with
  the learned (or fixed) lr. `per_net` is a dict with "key" (batches and
  augmentation) and either "params0" or, with `init_fn`, "init_key".
  """
  data, xs = problem.schedule.inputs(learned, fixed)

  def init(p):
    params = p["params0"] if init_fn is None else init_fn(p["init_key"])
    return inner.init_state(params, problem.tx)

  def step(state, t, p):
    step_fn = unroll.make_step(problem.schedule, apply_fn=problem.apply_fn,
                               tx=problem.tx, syn_aug=problem.syn_aug,
                               rotate_deg=problem.rotate_deg, key=p["key"])
    return step_fn(state, t, data, jax.tree.map(lambda a: a[t], xs))
  return Trainer(init, step)


def epoch_batches(n: int, batch: int) -> Callable:
  """Minibatches that go through a fresh permutation every epoch.

  `per_net["keys"]` holds one key per epoch; step t takes minibatch
  t mod (n // batch) of epoch t // (n // batch) (the last n mod batch
  examples of each permutation are skipped).
  """
  per_epoch = max(1, n // batch)

  def indices(p, t):
    perm = jax.random.permutation(p["keys"][t // per_epoch], n)
    return jax.lax.dynamic_slice(perm, ((t % per_epoch) * batch,), (batch,))
  return indices


def uniform_batches(n: int, batch: int) -> Callable:
  """Minibatches drawn uniformly with replacement; one key per step."""
  def indices(p, t):
    return jax.random.randint(p["keys"][t], (batch,), 0, n)
  return indices


def minibatch(apply_fn, tx, lr, x, y, indices: Callable,
              init_fn=None) -> Trainer:
  """Cross-entropy training on minibatches of (x, y).

  Args:
    apply_fn: network apply function.
    tx: direction transform of the optimiser (`core.inner_opt`; `inner.GD`
      is plain SGD): params <- params - lr * direction.
    lr: learning rate (float or traced).
    x: training images.
    y: integer labels.
    indices: `(per_net, t) -> (batch,)` indices (`epoch_batches`,
      `uniform_batches`).
    init_fn: `key -> params` if networks start from `per_net["init_key"]`;
      else they start from `per_net["params0"]`.
  """
  def init(p):
    params = p["params0"] if init_fn is None else init_fn(p["init_key"])
    return inner.init_state(params, tx)

  def step(state, t, p):
    i = indices(p, t)
    return inner.step(state, x[i], y[i], None, lr, apply_fn=apply_fn, tx=tx)
  return Trainer(init, step)


class NetState(NamedTuple):
  """A network with running statistics and its optax optimiser state."""
  params: Any
  batch_stats: Any
  opt_state: Any


def supervised(model, tx, x, indices: Callable, loss: Callable, *,
               targets: Callable, augment: Callable | None = None,
               mix: Callable | None = None, mesh=None) -> Trainer:
  """Training of a network with statistics (teachers and students).

  Step t takes the minibatch `idx = indices(per_net, t)` of `x`, augments
  it (`augment(key, t, idx, images)`), optionally mixes the batch
  (`mix(key, images) -> (images, mixing)`, CutMix or Mixup), asks
  `targets(key, t, idx, images, mixing)` for the targets (hard labels, a
  teacher's logits on the same images, or stored soft labels), then runs the
  network in train mode (batch statistics, running statistics updated) and
  applies one `tx` update to the parameters. The keys are
  `fold_in(per_net["key"], t)` split three ways; stored soft labels instead
  derive each image's augmentation from (epoch, image id), so `augment`
  and `targets` also receive t and idx.

  Args:
    model: a `nn.stat_models.StatModel` (`init`, `apply(variables, x,
      train=)` -> (logits, aux with "batch_stats")).
    tx: the optax optimiser (schedules included).
    x: the training images, or None: step t's images are then
      `per_net["images"]`, read on the host (`fit_host`, a streamed split).
    indices: `(per_net, t) -> (batch,)` (`epoch_batches`, ...).
    loss: `(logits, targets) -> scalar`.
    targets: `(key, t, idx, images, mixing) -> targets`.
    augment: `(key, t, idx, images) -> images`, or None.
    mix: `(key, images) -> (images, mixing)`, or None (mixing = None).
    mesh: the images and targets of each step are sharded over its "data"
      axis (the parameters replicated; BN statistics stay global means).

  `per_net` holds "init_key" (the network's initialisation), "key" (its
  augmentation and mixing) and whatever `indices` needs ("keys"). The output
  at each budget is the variables {"params", "batch_stats"}.
  """
  def init(p):
    variables = model.init(p["init_key"])
    return NetState(variables["params"], variables.get("batch_stats", {}),
                    tx.init(variables["params"]))

  def step(state, t, p):
    idx = p["idx"] if "idx" in p else indices(p, t)  # "idx": `fit_host`.
    k_aug, k_mix, k_tgt = jax.random.split(jax.random.fold_in(p["key"], t), 3)
    images = x[idx] if x is not None else p["images"]
    if augment is not None:
      images = augment(k_aug, t, idx, images)
    mixing = None
    if mix is not None:
      images, mixing = mix(k_mix, images)
    tgt = jax.lax.stop_gradient(targets(k_tgt, t, idx, images, mixing))
    images, tgt = sharding.shard_leading((images, tgt), mesh, sharding.DATA)

    def objective(params):
      logits, aux = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images,
          train=True)
      return loss(logits, tgt), aux["batch_stats"]
    grads, stats = jax.grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return NetState(optax.apply_updates(state.params, updates), stats,
                    opt_state)

  return Trainer(init, step, lambda s: {"params": s.params,
                                        "batch_stats": s.batch_stats})


def fit_host(trainer: Trainer, per_net, steps: int, indices: Callable,
             read: Callable, *, read_ahead: int = 2):
  """One network trained by a host loop whose images come from files.

  The same steps as `fit` on one network (`per_net` without the network
  axis), for a trainer built with images=None (`supervised`; step t gets
  its indices drawn once, on the host, as per_net["idx"]): each step is
  one jitted call, and step t's images are ``read(indices(per_net, t))``
  (a streamed split's `step_arrays`), read ahead by grain's prefetching
  iterator while the device computes. Only `read_ahead` + 1 batches are in
  memory; the result equals `fit` up to float summation order.

  Returns:
    `trainer.output` after `steps` steps.
  """
  import grain  # pylint: disable=g-import-not-at-top
  idx_of = jax.jit(indices)
  step = jax.jit(lambda s, t, p, idx, images: trainer.step(
      s, t, {**p, "idx": idx, "images": images}), donate_argnums=0)

  def read_step(t):  # The indices are drawn once, here, and passed on.
    idx = np.asarray(idx_of(per_net, t))
    return idx, read(idx)
  reads = grain.MapDataset.range(steps).map(read_step)
  state = jax.jit(trainer.init)(per_net)
  batches = reads.to_iter_dataset(grain.ReadOptions(
      num_threads=1, prefetch_buffer_size=read_ahead))
  for t, (idx, images) in enumerate(batches):
    state = step(state, jnp.int32(t), per_net, idx, images)
  return trainer.output(state)
