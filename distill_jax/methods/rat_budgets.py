"""RaT-BPTT evaluation protocol: validation-selected step budget.

Unlike the release (METHODS.md B.9), which reports the best test accuracy
over budgets, fresh networks are trained with the inner optimiser (same
subsampling and augmentation as distillation) on the distilled set for each
step budget in `eval_budgets`; the budget (and, in `run.train_rat`, the best
distillation checkpoint) is chosen on a validation split held out from the
training set, and test accuracy is reported once, mean +- std over
`eval_nets` networks.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import fit
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.platform import xla_options

EVAL_PROTOCOL = (
    "fresh networks trained with the inner optimiser (same subsampling and "
    "augmentation) for each budget in eval_budgets; budget and distillation "
    "checkpoint chosen on the validation split; test accuracy at the chosen "
    "budget, mean +- std over eval_nets networks")


def make_eval_train(cfg: rat_bptt.RatConfig, model: models.Model):
  """Jitted `(init keys, train keys, support, learned) -> params per budget`.

  Initialises one fresh network per init key and trains each with the inner
  optimiser (same subsampling and augmentation, `fit.distilled`), one after
  another or side by side (`cfg.eval_parallel`); returns the parameters
  after every budget, stacked as (len(eval_budgets), nets, ...). The
  initialisation is part of the one program: run eagerly, `vmap(init)`
  compiled dozens of small XLA:CPU executables that together kept ~130 MiB.
  """
  prob = rat_bptt.problem(cfg, model)

  def run_all(init_keys, keys, sup, learned):
    # `sup` is the whole support; of `learned` only the lrs are used.
    lrs = {"x": sup.x[:, :0], **{k: v for k, v in learned.items()
                                 if k == "raw_lr"}}
    trainer = fit.distilled(prob, lrs, sup, init_fn=model.init)
    return fit.fit(trainer, {"init_key": init_keys, "key": keys},
                   cfg.eval_budgets, parallel=cfg.eval_parallel)
  return xla_options.jit(run_all)


def evaluate_set(cfg: rat_bptt.RatConfig, model: models.Model, eval_train,
                 key, sup: rat_bptt.Support, learned: dict, nets: int, val,
                 test=None, norm=None):
  """Validation accuracy per budget; test accuracy at the chosen budget.

  Args:
    cfg: configuration (budgets).
    model: the network.
    eval_train: from `make_eval_train`.
    key: PRNG key of the fresh networks and their minibatches.
    sup: the distilled set to train on.
    learned: learned pytree (only its "raw_lr" is used, if any).
    nets: number of fresh networks.
    val: (x, y) validation split (or a `data.sources.Split`).
    test: (x, y) test split, a `data.sources.Split` (in memory or
      streamed), or None.
    norm: (mean, std) when the splits hold uint8 pixels (`Prepared.norm`).

  Returns:
    dict with "val" (budgets, nets) accuracies, "budget" chosen on
    validation, and "test" (nets,) at that budget if `test` is given.
  """
  k_init, k_train = jax.random.split(key)
  params = eval_train(jax.random.split(k_init, nets),
                      jax.random.split(k_train, nets), sup, learned)
  jax.block_until_ready(params)
  xla_options.release_host_memory()  # its compiler's memory, if it compiled.
  val_acc = np.stack([
      accuracy_lib.accuracy_on(model.apply,
                               jax.tree.map(lambda a, i=i: a[i], params),
                               val, batch=cfg.eval_batch, norm=norm)
      for i in range(len(cfg.eval_budgets))])
  best = int(np.argmax(val_acc.mean(1)))
  out = {"val": val_acc, "budget": cfg.eval_budgets[best]}
  if test is not None:
    out["test"] = accuracy_lib.accuracy_on(
        model.apply, jax.tree.map(lambda a: a[best], params), test,
        batch=cfg.eval_batch, norm=norm)
  return out


def final_eval(cfg: rat_bptt.RatConfig, prep: rat_bptt.Prepared,
               model: models.Model, key, sup: rat_bptt.Support,
               learned: dict) -> dict:
  """Validation-selected test accuracy over `eval_nets` fresh networks."""
  ds = prep.ds
  t = time.time()
  res = evaluate_set(cfg, model, make_eval_train(cfg, model), key, sup,
                     learned, cfg.eval_nets,
                     (jax.device_put(prep.x_val), jnp.asarray(ds.y_val)),
                     prep.split("test"), norm=prep.norm)
  return {
      "test_acc": accuracy_lib.summary(res["test"]),
      "selected_budget": res["budget"],
      "val_acc_by_budget": {str(b): accuracy_lib.summary(a) for b, a in
                            zip(cfg.eval_budgets, res["val"])},
      "eval_time_s": round(time.time() - t, 1),
  }
