"""Tests of the one routine that trains fresh networks (`eval.fit`)."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
import chex

from distill_jax.core import inner
from distill_jax.core import inner_opt
from distill_jax.core import meta
from distill_jax.core import schedule as schedule_lib
from distill_jax.eval import fit
from distill_jax.eval import replay
from tests import test_utils  # pylint: disable=unused-import


def _mlp_init(key, d=12, h=8, c=3):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (d, h)) * 0.3, "b1": jnp.zeros(h),
          "w2": jax.random.normal(k2, (h, c)) * 0.3, "b2": jnp.zeros(c)}


def _mlp_apply(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
  return h @ params["w2"] + params["b2"][None]


def _problem(epochs=2):
  return replay.replay_problem(_mlp_apply, epochs)


def _learned(steps=3, n=4, key=0):
  k1, k2 = jax.random.split(jax.random.key(key))
  x = jax.random.normal(k1, (steps, n, 2, 2, 3))
  labels = jax.random.randint(k2, (steps, n), 0, 3)
  raw_lr = jnp.full((steps * 2,), 0.3) + 0.05 * jnp.arange(steps * 2)
  return {"x": x, "raw_lr": raw_lr}, labels


class FitTest(chex.TestCase):

  def _nets(self, k=3):
    return jax.vmap(_mlp_init)(jax.random.split(jax.random.key(1), k))

  def test_replay_matches_a_python_loop(self):
    learned, labels = _learned()
    params0 = self._nets()
    got = replay.replay(_mlp_apply, params0, learned, labels, epochs=2)
    lrs = schedule_lib.softplus_lrs(learned["raw_lr"])
    for i in range(3):
      p = jax.tree.map(lambda a, i=i: a[i], params0)
      for t in range(6):
        p = inner.gd_step(_mlp_apply, p, learned["x"][t % 3],
                          labels[t % 3], lrs[t])
      chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], got), p,
                                  rtol=1e-5, atol=1e-6)

  def test_replay_equals_the_distillation_unroll(self):
    # Replay trains with exactly the inner problem of distillation.
    learned, labels = _learned()
    params0 = self._nets(2)
    keys = jax.random.split(jax.random.key(0), 2)
    got = replay.replay(_mlp_apply, params0, learned, labels, epochs=2,
                        key=jax.random.key(0))
    for i in range(2):
      want = meta.train(_problem(), jax.tree.map(lambda a, i=i: a[i], params0),
                        learned, labels, keys[i])
      chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], got),
                                  want, rtol=1e-5, atol=1e-6)

  def test_budgets_record_the_same_run(self):
    learned, labels = _learned()
    trainer = fit.distilled(_problem(), learned, labels)
    per_net = {"params0": self._nets(2),
               "key": jax.random.split(jax.random.key(0), 2)}
    both = fit.fit(trainer, per_net, (2, 5))
    for j, b in enumerate((2, 5)):
      one = fit.fit(trainer, per_net, (b,))
      chex.assert_trees_all_close(jax.tree.map(lambda a, j=j: a[j], both),
                                  jax.tree.map(lambda a: a[0], one),
                                  rtol=1e-5, atol=1e-6)
    chex.assert_shape(both["w1"], (2, 2, 12, 8))

  def test_map_equals_vmap(self):
    learned, labels = _learned()
    trainer = fit.distilled(_problem(), learned, labels, init_fn=_mlp_init)
    per_net = {"init_key": jax.random.split(jax.random.key(3), 3),
               "key": jax.random.split(jax.random.key(4), 3)}
    a = fit.fit(trainer, per_net, (6,), parallel="vmap")
    b = fit.fit(trainer, per_net, (6,), parallel="map")
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite(a)

  def test_minibatch_adam_matches_a_python_loop(self):
    x = jax.random.normal(jax.random.key(5), (20, 2, 2, 3))
    y = jax.random.randint(jax.random.key(6), (20,), 0, 3)
    opt = inner_opt.build("adam", 0.01, eps_root=0.0)
    trainer = fit.minibatch(_mlp_apply, opt.tx, opt.lr, x, y,
                            fit.uniform_batches(20, 5))
    params0 = self._nets(2)
    keys = jax.vmap(lambda k: jax.random.split(k, 4))(
        jax.random.split(jax.random.key(7), 2))
    got = fit.fit(trainer, {"params0": params0, "keys": keys}, (4,))
    full = inner_opt.optimizer(opt)
    for i in range(2):
      p = jax.tree.map(lambda a, i=i: a[i], params0)
      s = full.init(p)
      for t in range(4):
        idx = jax.random.randint(keys[i, t], (5,), 0, 20)
        g = jax.grad(inner.loss, argnums=1)(_mlp_apply, p, x[idx], y[idx])
        u, s = full.update(g, s, p)
        p = jax.tree.map(lambda a, b: a + b, p, u)
      chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[0, i], got),
                                  p, rtol=1e-5, atol=1e-6)

  def test_epoch_batches_visit_every_example_once_per_epoch(self):
    indices = fit.epoch_batches(12, 4)
    p = {"keys": jax.random.split(jax.random.key(0), 2)}
    for e in range(2):
      seen = np.concatenate([np.asarray(indices(p, jnp.int32(3 * e + i)))
                             for i in range(3)])
      np.testing.assert_array_equal(np.sort(seen), np.arange(12))
    first = np.asarray(indices(p, jnp.int32(0)))
    again = np.asarray(indices(p, jnp.int32(3)))
    self.assertFalse(np.array_equal(first, again))  # a new permutation.

  def test_retrain_learns_separable_data(self):
    x = jax.random.normal(jax.random.key(8), (30, 2, 2, 3))
    w = jax.random.normal(jax.random.key(9), (12, 3))
    y = jnp.argmax(x.reshape(30, -1) @ w, -1)
    acc = replay.retrain_accuracy(_mlp_apply, self._nets(3),
                                  jax.random.key(0), x, y, x, y, lr=0.5,
                                  epochs=30, batch_size=10)
    self.assertGreater(float(acc.mean()), 0.8)

  def test_bad_arguments(self):
    trainer = fit.Trainer(lambda p: p, lambda s, t, p: s)
    with self.assertRaisesRegex(ValueError, "parallel='pmap'"):
      fit.fit(trainer, jnp.zeros(2), (1,), parallel="pmap")
    with self.assertRaisesRegex(ValueError, "increasing"):
      fit.fit(trainer, jnp.zeros(2), (3, 3))


if __name__ == "__main__":
  absltest.main()
