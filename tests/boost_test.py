"""Boost-DD: fixed earlier blocks weighted by beta, nested prefixes."""

import dataclasses
import functools
import os
import shutil

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.core import meta
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.run import storage
from distill_jax.run import train_boost as boost
from tests import test_utils

SHAPE, C = (4, 4, 1), 3


class BoostTest(absltest.TestCase):

  def test_fixed_blocks_and_prefix_nesting(self):
    xs = [np.full((C, 2, *SHAPE), b, np.float32) for b in range(3)]
    ys = [np.broadcast_to(np.eye(C)[:, None], (C, 2, C)) for _ in range(3)]
    fixed = boost.fixed_blocks(xs[:2], ys[:2], 0.25, C, SHAPE)
    chex.assert_shape(fixed.x, (C, 4, *SHAPE))
    chex.assert_trees_all_equal(fixed.w, jnp.full((C, 4), 0.25))
    empty = boost.fixed_blocks([], [], 0.25, C, SHAPE)
    chex.assert_shape(empty.x, (C, 0, *SHAPE))
    x_all = np.concatenate(xs, axis=1)
    y_all = np.concatenate(ys, axis=1)
    for k in (1, 2, 3):
      px, _ = boost.prefix(x_all, y_all, k, 2)
      chex.assert_shape(px, (C, 2 * k, *SHAPE))
      np.testing.assert_array_equal(np.unique(px), np.arange(k))
    px2, _ = boost.prefix(x_all, y_all, 2, 2)
    np.testing.assert_array_equal(boost.prefix(x_all, y_all, 1, 2)[0],
                                  px2[:, :2])

  def test_old_blocks_fixed_and_scaled_by_beta(self):
    cfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=1, batch_per_class=2, boost_blocks=2,
        total_steps=3, window=2, syn_aug="none", real_aug="none",
        inner_opt="gd", inner_lr=0.1, real_batch=6, val_size=5).validate()
    model = models.build(cfg, SHAPE, C)
    learned = rat_bptt.init_learned(jax.random.key(0), cfg, C, SHAPE)
    old = [np.asarray(jax.random.normal(jax.random.key(1), (C, 1, *SHAPE)))]
    eye = [np.broadcast_to(np.eye(C)[:, None], (C, 1, C))]
    rx = jax.random.normal(jax.random.key(2), (6, *SHAPE))
    ry = jnp.arange(6) % C
    loss = functools.partial(meta.loss, params0=None, key=jax.random.key(3),
                             start=jnp.int32(1), real_x=rx, real_y=ry,
                             problem=rat_bptt.problem(cfg, model))

    def inner_grad_of_old(beta):
      sup = rat_bptt.support(learned, boost.fixed_blocks(old, eye, beta, C,
                                                         SHAPE))
      p = model.init(jax.random.key(4))
      w = sup.w.reshape(-1)

      def f(params):
        ce = -jnp.sum(sup.y.reshape(-1, C) * jax.nn.log_softmax(model.apply(
            params, sup.x.reshape(-1, *SHAPE))), -1)
        return jnp.mean(w * ce * (jnp.arange(w.size) % 2 == 0))  # old only.
      return jax.grad(f)(p)
    chex.assert_trees_all_close(
        inner_grad_of_old(0.1),
        jax.tree.map(lambda g: 0.1 * g, inner_grad_of_old(1.0)), rtol=1e-5,
        atol=1e-8)
    g = jax.jit(jax.grad(loss))(learned, boost.fixed_blocks(old, eye, 0.1, C,
                                                            SHAPE))
    self.assertEqual(set(g), {"x"})  # only the new block is learned.
    chex.assert_tree_all_finite(g)


  def test_slow_mode_scales_outer_update_of_old_blocks(self):
    """x_scale multiplies the Adam update per image: beta on old blocks, the
    new block's update unchanged (against the unscaled step)."""
    cfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=2, batch_per_class=2, total_steps=3,
        window=2, syn_aug="none", real_aug="none", inner_opt="sgd",
        inner_lr=0.1, real_batch=6, val_size=5, learn_labels=True,
        num_inits=2).validate()
    model = models.build(cfg, SHAPE, C)
    tx = rat_bptt.outer_optimizer(cfg)
    learned = rat_bptt.init_learned(jax.random.key(0), cfg, C, SHAPE)
    rx = np.asarray(jax.random.normal(jax.random.key(2), (6, *SHAPE)))
    ry = np.arange(6) % C
    idx = np.arange(6)
    fixed = rat_bptt.empty_fixed(C, SHAPE)
    scale = np.ones((C, 2), np.float32)
    scale[:, 0] = 0.25  # image 0 of each class is the "old block".

    def moved(x_scale):
      state = rat_bptt.init_state(jax.tree.map(jnp.array, learned), tx)
      step = rat_bptt.make_step(cfg, model, tx, x_scale)
      new, _ = step(state, fixed, rx, ry, idx, jax.random.key(5))
      return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                          new.learned, learned)
    full, part = moved(None), moved(jnp.asarray(scale))
    chex.assert_trees_all_close(part["x"][:, 1], full["x"][:, 1], rtol=1e-4,
                                atol=1e-7)
    chex.assert_trees_all_close(part["x"][:, 0], 0.25 * full["x"][:, 0],
                                rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(part["y"][:, 0], 0.25 * full["y"][:, 0],
                                rtol=1e-4, atol=1e-7)
    self.assertGreater(float(np.abs(full["x"][:, 0]).max()), 0.0)


class BoostRunTest(absltest.TestCase):

  def _cfg(self, mode):
    return rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=1, batch_per_class=1, boost_blocks=2,
        boost_mode=mode, boost_beta=0.5, total_steps=3, window=2,
        syn_aug="none", real_aug="none", inner_opt="sgd", inner_lr=0.1,
        real_batch=12, num_inits=1, outer_lr=0.05, outer_steps=3,
        eval_every=0, eval_budgets=(2,), val_nets=1, eval_nets=1,
        checkpoint_every=0, val_size=12).validate()

  def test_modes_and_resume(self):
    ds = test_utils.tiny_dataset()
    out = {}
    for mode in ("frozen", "slow"):
      wd = self.create_tempdir().full_path
      rep = boost.run(self._cfg(mode), wd, dataset=ds, show_progress=False)
      self.assertEqual([b["ipc"] for b in rep["budgets"]], [1, 2])
      self.assertEqual(rep["boost_mode"], mode)
      dset = storage.load_distilled_set(os.path.join(wd, "distilled.npz"))
      self.assertEqual((dset.method, dset.metadata["block_ipc"]),
                       ("boost_dd", 1))
      view = dset.per_class()
      np.testing.assert_array_equal(view.block, [[0, 1]] * C)
      out[mode] = (wd, view.x)
    # Block 0 is distilled identically; afterwards frozen keeps it, slow
    # keeps learning it.
    b0 = np.load(os.path.join(out["frozen"][0], "block_00", "block.npz"))
    np.testing.assert_array_equal(out["frozen"][1][:, :1], b0["x"])
    b0s = np.load(os.path.join(out["slow"][0], "block_00", "block.npz"))
    np.testing.assert_array_equal(b0s["x"], b0["x"])
    self.assertGreater(np.abs(out["slow"][1][:, :1] - b0s["x"]).max(), 0.0)
    # Resume in slow mode: re-distilling the last block from block_00.npz
    # gives the uninterrupted result.
    wd, want = out["slow"]
    again = self.create_tempdir().full_path
    shutil.copytree(wd, again, dirs_exist_ok=True)
    shutil.rmtree(os.path.join(again, "block_01"))
    os.remove(os.path.join(again, "distilled.npz"))
    boost.run(self._cfg("slow"), again, dataset=ds, show_progress=False,
              resume=True)
    got = storage.load_distilled_set(
        os.path.join(again, "distilled.npz")).per_class().x
    np.testing.assert_array_equal(got.reshape(want.shape), want)

  def test_corrupt_block_file(self):
    ds = test_utils.tiny_dataset()
    wd = self.create_tempdir().full_path
    os.makedirs(os.path.join(wd, "block_00"))
    with open(os.path.join(wd, "block_00", "block.npz"), "w") as f:
      f.write("not a zip")
    with self.assertRaisesRegex(ValueError, "not a Boost-DD block file"):
      boost.run(dataclasses.replace(self._cfg("slow")), wd, dataset=ds,
                show_progress=False, resume=True)


if __name__ == "__main__":
  absltest.main()
