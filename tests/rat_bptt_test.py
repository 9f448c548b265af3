"""RaT-BPTT core: full-window BPTT, gradient-free prefix, one compile,
non-negative soft labels, clipping EMA."""

import dataclasses
import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax.core import inner
from distill_jax.core import meta
from distill_jax.core import outer
from distill_jax.core import unroll
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.methods import rat_budgets as rat_eval
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from tests import test_utils  # pylint: disable=unused-import

SHAPE, C = (4, 4, 1), 3


def _cfg(**kw):
  base = dict(arch="mlp", mlp_hidden=(8,), ipc=2, batch_per_class=1,
              total_steps=6, window=2, syn_aug="none", real_aug="none",
              real_batch=12, num_inits=2, inner_opt="sgd", inner_lr=0.1,
              val_size=10, remat="full")
  base.update(kw)
  return rat_bptt.RatConfig(**base).validate()


def _problem(cfg):
  model = models.build(cfg, SHAPE, C)
  learned = rat_bptt.init_learned(jax.random.key(0), cfg, C, SHAPE)
  learned = {**learned, "x": learned["x"] * 20.0}
  rx = jax.random.normal(jax.random.key(1), (cfg.real_batch, *SHAPE))
  ry = jax.random.randint(jax.random.key(2), (cfg.real_batch,), 0, C)
  return model, learned, rx, ry


def _step(cfg, model):
  """One inner step `(state, t, key, support, raw_lr) -> state`."""
  prob = rat_bptt.problem(cfg, model)

  def step(state, t, key, sup, raw_lr):
    fn = unroll.make_step(prob.schedule, apply_fn=model.apply, tx=prob.tx,
                          syn_aug=cfg.syn_aug, rotate_deg=cfg.rotate_deg,
                          key=key)
    return fn(state, t, (sup, raw_lr), None)
  return step


def _reference(cfg, model, learned, key, start, rx, ry):
  """Python loop: prefix on constants, then a differentiable window."""
  opt = rat_bptt.build_opt(cfg)
  fixed = rat_bptt.empty_fixed(C, SHAPE)
  k_init, k_steps, _ = jax.random.split(key, 3)
  p = model.init(k_init)
  state = inner.init_state(p, opt.tx)
  step = _step(cfg, model)
  const = jax.tree.map(np.asarray, learned)
  for t in range(start):
    state = step(state, t, k_steps, rat_bptt.support(const, fixed),
                 const.get("raw_lr"))

  def window(l):
    s = state
    for t in range(start, start + cfg.window_len):
      s = step(s, t, k_steps, rat_bptt.support(l, fixed), l.get("raw_lr"))
    logits = model.apply(s.params, rx)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         ry[:, None], 1))
  return jax.jit(jax.value_and_grad(window))(learned)


def _meta(cfg, model, learned, key, start, rx, ry):
  f = functools.partial(meta.loss, problem=rat_bptt.problem(cfg, model))
  return jax.jit(jax.value_and_grad(f))(
      learned, rat_bptt.empty_fixed(C, SHAPE), None, key, jnp.int32(start),
      rx, ry)


class MetaLossTest(absltest.TestCase):

  def test_full_window_is_full_bptt(self):
    cfg = _cfg(truncation="full", total_steps=4)
    model, learned, rx, ry = _problem(cfg)
    key = jax.random.key(3)
    got = _meta(cfg, model, learned, key, 0, rx, ry)
    want = _reference(cfg, model, learned, key, 0, rx, ry)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
    self.assertGreater(float(jnp.abs(got[1]["x"]).sum()), 0.0)

  def test_chunked_real_loss_matches_reference(self):
    cfg = _cfg(truncation="full", total_steps=3, real_chunk=5)  # 5 + 5 + 2.
    model, learned, rx, ry = _problem(cfg)
    key = jax.random.key(6)
    got = _meta(cfg, model, learned, key, 0, rx, ry)
    want = _reference(cfg, model, learned, key, 0, rx, ry)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)

  def test_prefix_passes_no_gradient(self):
    cfg = _cfg(inner_opt="gd", learn_lr=True, total_steps=6, window=2)
    model, learned, rx, ry = _problem(cfg)
    key = jax.random.key(4)
    loss, grads = _meta(cfg, model, learned, key, 3, rx, ry)
    ref_loss, ref_grads = _reference(cfg, model, learned, key, 3, rx, ry)
    chex.assert_trees_all_close((loss, grads), (ref_loss, ref_grads),
                                rtol=1e-4, atol=1e-6)
    g = np.asarray(grads["raw_lr"])
    np.testing.assert_array_equal(g[:3], 0.0)  # prefix-only lrs.
    np.testing.assert_array_equal(g[5:], 0.0)  # after the window.
    self.assertTrue(np.all(g[3:5] != 0.0))

  def test_one_compilation_across_window_starts(self):
    cfg = _cfg(truncation="random", num_inits=2)
    model, learned, rx, ry = _problem(cfg)
    fixed = rat_bptt.empty_fixed(C, SHAPE)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad(learned, starts):
      return meta.value_and_grad(
          learned, fixed, None, jax.random.split(jax.random.key(0), 2),
          starts, rx, ry, problem=rat_bptt.problem(cfg, model))
    for starts in ([0, 4], [3, 1], [2, 2]):
      chex.assert_tree_all_finite(grad(learned, jnp.array(starts, jnp.int32)))
    chex.clear_trace_counter()

  def test_outer_step_compiles_once_labels_stay_nonnegative(self):
    cfg = _cfg(learn_labels=True, outer_lr=0.5, truncation="random")
    model, learned, rx, ry = _problem(cfg)
    tx = rat_bptt.outer_optimizer(cfg)
    step = rat_bptt.make_step(cfg, model, tx)
    state = rat_bptt.init_state(learned, tx)
    fixed = rat_bptt.empty_fixed(C, SHAPE)
    starts = []
    for _ in range(4):
      state, m = step(state, fixed, rx, ry, jnp.arange(cfg.real_batch),
                      jax.random.key(5))
      starts.append(float(m["start_mean"]))
    self.assertEqual(step._cache_size(), 1)  # pylint: disable=protected-access
    self.assertGreater(len(set(starts)), 1)
    self.assertGreaterEqual(float(state.learned["y"].min()), 0.0)
    self.assertLess(float(state.learned["y"].min()), 1e-6)  # clipping bit.
    self.assertEqual(int(state.step), 4)
    chex.assert_tree_all_finite(state.learned)


class PixelsTest(absltest.TestCase):

  def test_uint8_real_data_matches_float(self):
    """uint8 splits normalised inside the step (`norm`) give the same
    outer step as the float32 splits; without `norm` a clear error."""
    cfg = _cfg(truncation="random")
    model, learned, _, ry = _problem(cfg)
    norm = ((0.3,), (0.2,))
    xu = np.random.default_rng(0).integers(
        0, 256, (cfg.real_batch, *SHAPE), np.uint8)
    xf = data.normalize(xu, *norm)
    tx = rat_bptt.outer_optimizer(cfg)
    fixed = rat_bptt.empty_fixed(C, SHAPE)
    idx = jnp.arange(cfg.real_batch)[::-1]
    fresh = lambda: jax.tree.map(jnp.array, learned)  # the step donates.
    out = []
    for x, kw in ((xf, {}), (xu, {"norm": norm})):
      step = rat_bptt.make_step(cfg, model, tx, **kw)
      state, m = step(rat_bptt.init_state(fresh(), tx), fixed,
                      jax.device_put(x), ry, idx, jax.random.key(5))
      out.append((state.learned["x"], m["loss"]))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])
    step = rat_bptt.make_step(cfg, model, tx)
    with self.assertRaisesRegex(ValueError, "norm="):
      step(rat_bptt.init_state(fresh(), tx), fixed, jax.device_put(xu), ry,
           idx, jax.random.key(5))

  def test_accuracy_on_uint8(self):
    cfg = _cfg()
    model = models.build(cfg, SHAPE, C)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 2))
    norm = ((0.3,), (0.2,))
    xu = np.random.default_rng(1).integers(0, 256, (37, *SHAPE), np.uint8)
    y = np.random.default_rng(2).integers(0, C, 37).astype(np.int32)
    ref = accuracy_lib.accuracy(model.apply, params, data.normalize(xu, *norm), y,
                                batch=8)
    got = accuracy_lib.accuracy(model.apply, params, xu, y, batch=8, norm=norm)
    np.testing.assert_array_equal(ref, got)
    with self.assertRaisesRegex(ValueError, "norm="):
      accuracy_lib.accuracy(model.apply, params, xu, y, batch=8)


class EvalTrainTest(absltest.TestCase):

  def test_matches_python_loop_per_net_and_budget(self):
    """Fresh nets (initialised inside the program, one after another on
    CPU) equal a Python loop of inner steps, at every budget."""
    cfg = _cfg(eval_budgets=(2, 5), syn_aug="flip_rotate")
    model, learned, _, _ = _problem(cfg)
    sup = rat_bptt.support(learned, rat_bptt.empty_fixed(C, SHAPE))
    k_init = jax.random.split(jax.random.key(3), 2)
    k_train = jax.random.split(jax.random.key(4), 2)
    got = rat_eval.make_eval_train(cfg, model)(k_init, k_train, sup, learned)
    chex.assert_tree_shape_prefix(got, (2, 2))  # (budgets, nets).
    opt = rat_bptt.build_opt(cfg)
    step = jax.jit(_step(cfg, model))
    for n in range(2):
      p = model.init(k_init[n])
      state = inner.init_state(p, opt.tx)
      for t in range(5):
        state = step(state, t, k_train[n], sup, None)
        if t + 1 in cfg.eval_budgets:
          b = cfg.eval_budgets.index(t + 1)
          chex.assert_trees_all_close(
              jax.tree.map(lambda a, b=b, n=n: a[b, n], got), state.params,
              rtol=1e-5, atol=1e-6)


class ClipTest(absltest.TestCase):

  def test_ema_update_and_clip(self):
    g = jnp.full((4,), 1.0)  # norm 2.
    out, ema, n = outer.clip_by_ema(g, jnp.float32(-1.0), 0.9)
    self.assertAlmostEqual(float(ema), 2.0, places=5)
    self.assertAlmostEqual(float(n), 2.0, places=5)
    chex.assert_trees_all_close(out, g)  # 2 <= 2 * 2: unclipped.
    big = g * 10.0  # norm 20: ema = 0.9 * 2 + 0.1 * 20 = 3.8, clip to 7.6.
    out, ema, n = outer.clip_by_ema(big, ema, 0.9)
    self.assertAlmostEqual(float(ema), 3.8, places=4)
    self.assertAlmostEqual(float(jnp.linalg.norm(out)), 7.6, places=3)


class ConfigTest(absltest.TestCase):

  def test_errors_name_the_fix(self):
    for kw, msg in ((dict(learn_lr=True), "needs inner_opt='gd'"),
                    (dict(window=9), "window=9 must be in"),
                    (dict(val_size=0), "set val_size > 0"),
                    (dict(batch_per_class=3), "batch_per_class=3"),
                    (dict(eval_budgets=(10, 5)), "strictly increasing"),
                    (dict(syn_aug="crop"), "unknown operations")):
      with self.assertRaisesRegex(ValueError, msg):
        dataclasses.replace(_cfg(), **kw).validate()

  def test_init_learned_inside_jit(self):
    cfg = _cfg(learn_labels=True)
    got = jax.jit(lambda k: rat_bptt.init_learned(k, cfg, C, SHAPE))(
        jax.random.key(0))
    want = rat_bptt.init_learned(jax.random.key(0), cfg, C, list(SHAPE))
    chex.assert_trees_all_close(got, want)

  def test_unit_norm_init(self):
    cfg = _cfg()
    x = rat_bptt.init_learned(jax.random.key(0), cfg, C, SHAPE)["x"]
    chex.assert_shape(x, (C, 2, *SHAPE))
    chex.assert_trees_all_close(jnp.sqrt(jnp.sum(x * x, axis=(2, 3, 4))),
                                jnp.ones((C, 2)), atol=1e-5)




if __name__ == "__main__":
  absltest.main()
