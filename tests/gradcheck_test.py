"""Meta-gradients against float64 finite differences, with a power test.

Every case computes the core's meta-gradient (`core.meta.value_and_grad`)
in float64 and checks it with `gradcheck.check_with_mutations`: central
differences along random unit directions, tolerance relative to the
gradient's norm, and the same check must reject the zeroed, negated and
halved gradient (and each leaf zeroed alone).

Cases: DD w.r.t. images and learned lrs (MLP and ConvNet, two
initialisations, vmapped and one at a time), and DD with soft labels,
flip/rotate and inner Adam; the RaT-BPTT window after a forward-only prefix
(inner SGD, Adam, and GD with learned lrs; MLP and ConvNet); Boost-DD's
fixed blocks; learned soft labels; flip/rotate augmentation of the
distilled and the real images.

All calls of library functions are in the adapters below.
"""

import dataclasses
from typing import Any, Callable

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp

from distill_jax.core import inner
from distill_jax.core import meta
from distill_jax.core import unroll
from distill_jax.data import augment
from distill_jax.methods import dd
from distill_jax.methods import dd_data as distilled
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.run import train_boost as boost
from tests import gradcheck
from tests import test_utils

NUM_CLASSES = 3
MLP_SHAPE = (4, 4, 1)
CONV_SHAPE = (8, 8, 1)
CONVNET = dict(arch="convnet", width=4, depth=2)
EPS = 1e-6
RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Case:
  """f (the finite-difference reference), the point, the gradient under
  test, the program that computed it, the loss it reported, and for
  RaT-BPTT the loss whose differences include the burn-in and
  `reference(**problem_changes) -> f` (e.g. augmentation off)."""
  f: Callable
  params: Any
  grad: Any
  value_and_grad: Callable
  loss: float
  f_full: Callable | None = None
  reference: Callable | None = None


# ------------------------------------------------- adapters: library calls.


def _f64_model(cfg, shape) -> models.Model:
  """The model of `cfg`, whose init returns float64 parameters (flax
  draws the biases in float32)."""
  model = models.build(cfg, shape, NUM_CLASSES)
  return models.Model(init=lambda k: gradcheck.to_f64(model.init(k)),
                      apply=model.apply, name=model.name)


def _value_and_grad(prob, fixed, params0, keys, starts, rx, ry,
                    init_group=0):
  """The gradient under test: the core's vmapped meta-gradient (jitted
  function of the learned data)."""
  return jax.jit(lambda l: meta.value_and_grad(
      l, fixed, params0, keys, starts, rx, ry, problem=prob,
      init_group=init_group))


def _loss(prob, learned, fixed, params0, key, start, rx, ry):
  """The core's meta-loss of one initialisation (no vmap)."""
  return meta.loss(learned, fixed, params0, key, start, rx, ry, problem=prob)


def _truncated_loss(prob, base, learned, fixed, key, start, rx, ry):
  """Reference meta-loss of one initialisation as a Python loop of inner
  steps: steps 0..start-1 on the base point's `base` values (constants, as
  the core's stop-gradient burn-in sees them), then the window on
  `learned`."""
  k_init, k_steps, k_real = jax.random.split(key, 3)
  params = prob.init_fn(k_init)
  state = inner.init_state(params, prob.tx)
  step = _unroll_step(prob, k_steps)
  for t in range(start + prob.window):
    data, xs = prob.schedule.inputs(base if t < start else learned, fixed)
    state = step(state, t, data, None if xs is None else jax.tree.map(
        lambda a, t=t: a[t], xs))
  x = augment.apply(k_real, rx, prob.real_aug, max_deg=prob.rotate_deg)
  return inner.loss(prob.apply_fn, state.params, x, ry)


def _unroll_step(prob, key):
  """The core's inner step (batch, augmentation, update) of one init."""
  return unroll.make_step(prob.schedule, apply_fn=prob.apply_fn, tx=prob.tx,
                          syn_aug=prob.syn_aug, rotate_deg=prob.rotate_deg,
                          key=key)


def _real_batch(seed: int, n: int, shape):
  kx, ky = jax.random.split(jax.random.key(100 + seed))
  return (jax.random.normal(kx, (n, *shape), jnp.float64),
          jax.random.randint(ky, (n,), 0, NUM_CLASSES))


def dd_case(seed: int, init_group: int = 0, **kw) -> Case:
  """DD (`methods.dd.problem`), two initialisations, no burn-in."""
  cfg = test_utils.tiny_config(**kw)
  shape = CONV_SHAPE if cfg.arch == "convnet" else MLP_SHAPE
  model = _f64_model(cfg, shape)
  prob = dd.problem(cfg, model.apply)
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  learned, labels = distilled.init(
      k1, steps=cfg.steps, epochs=cfg.epochs, num_classes=NUM_CLASSES,
      per_class=1, image_shape=shape, lr_init=cfg.lr_init)
  if cfg.learn_labels:
    learned["y"] = jax.nn.one_hot(labels, NUM_CLASSES)
  learned = gradcheck.to_f64(learned)
  params0 = jax.vmap(model.init)(jax.random.split(k2, cfg.num_inits))
  keys = jax.random.split(k3, cfg.num_inits)
  rx, ry = _real_batch(seed, cfg.real_batch, shape)
  vg = _value_and_grad(prob, labels, params0, keys, None, rx, ry, init_group)

  def f(l):  # one initialisation at a time.
    return jnp.mean(jnp.stack([_loss(
        prob, l, labels, jax.tree.map(lambda a, j=j: a[j], params0), keys[j],
        None, rx, ry) for j in range(cfg.num_inits)]))
  loss, grad = vg(learned)
  return Case(f, learned, grad, vg, float(loss))


def rat_config(arch: str = "mlp", **kw) -> rat_bptt.RatConfig:
  base = dict(arch=arch, mlp_hidden=(8,), ipc=2, batch_per_class=1,
              total_steps=4, window=2, truncation="random",
              image_init="gaussian", syn_aug="none", real_aug="none",
              real_batch=12, real_chunk=5, num_inits=2, inner_opt="sgd",
              inner_lr=0.1, val_size=10)
  if arch == "convnet":
    base.update(width=4, depth=2)
  base.update(kw)
  return rat_bptt.RatConfig(**base).validate()


def rat_case(cfg: rat_bptt.RatConfig, starts=(2, 1), fixed_blocks=0,
             seed: int = 0) -> Case:
  """RaT-BPTT (`rat_bptt.problem`) with window starts > 0.

  The reference `f` is `_truncated_loss`, whose burn-in runs on the base
  point's values; `f_full` is the core's own forward loss, whose finite
  differences include the burn-in's dependence on the data.
  """
  shape = CONV_SHAPE if cfg.arch == "convnet" else MLP_SHAPE
  prob = rat_bptt.problem(cfg, _f64_model(cfg, shape))
  k_l, k_fix, k_inits = jax.random.split(jax.random.key(seed), 3)
  base = gradcheck.to_f64(rat_bptt.init_learned(k_l, cfg, NUM_CLASSES, shape))
  xs = [jax.random.normal(k, (NUM_CLASSES, cfg.ipc, *shape), jnp.float64)
        for k in jax.random.split(k_fix, fixed_blocks)]
  ys = [jnp.broadcast_to(jnp.eye(NUM_CLASSES)[:, None],
                         (NUM_CLASSES, cfg.ipc, NUM_CLASSES))] * fixed_blocks
  fixed = gradcheck.to_f64(boost.fixed_blocks(
      xs, ys, cfg.boost_beta, NUM_CLASSES, shape))
  keys = jax.random.split(k_inits, cfg.num_inits)
  rx, ry = _real_batch(seed, cfg.real_batch, shape)
  vg = _value_and_grad(prob, fixed, None, keys,
                       jnp.asarray(starts, jnp.int32), rx, ry)

  def reference(**changes):
    p = dataclasses.replace(prob, **changes)
    return lambda l: jnp.mean(jnp.stack([_truncated_loss(
        p, base, l, fixed, keys[j], s, rx, ry) for j, s in enumerate(starts)]))

  def f_full(l):
    return jnp.mean(jnp.stack([_loss(
        prob, l, fixed, None, keys[j], jnp.int32(s), rx, ry)
                               for j, s in enumerate(starts)]))
  loss, grad = vg(base)
  return Case(reference(), base, grad, vg, float(loss), f_full, reference)


# ---------------------------------------------------------------- tests.


def _check(case: Case, seed: int = 0) -> dict:
  """Float64 everywhere, the reference reproduces the loss, the gradient
  passes and every mutation fails; returns the margins."""
  gradcheck.assert_float64_grad(case.value_and_grad, case.params)
  chex.assert_tree_all_finite(case.grad)
  chex.assert_trees_all_equal_shapes(case.grad, case.params)
  ref = float(jax.jit(case.f)(case.params))
  if abs(ref - case.loss) > 1e-10 * max(1.0, abs(ref)):
    raise AssertionError(
        f"the reference loss {ref!r} differs from the core's {case.loss!r}: "
        "update _truncated_loss to the core's keys and step order.")
  return gradcheck.check_with_mutations(
      case.f, case.params, case.grad, key=jax.random.key(1000 + seed),
      eps=EPS, rtol=RTOL)


class GradcheckTest(absltest.TestCase):
  """The checker itself, on functions with known gradients."""

  def _f(self, p):
    return jnp.sum(jnp.sin(p["a"]) * p["b"][0]) + jnp.sum(p["b"] ** 3)

  def _point(self):
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"a": jax.random.normal(k1, (5, 2)),
            "b": jax.random.normal(k2, (3,))}

  def test_true_gradient_passes_mutations_fail(self):
    with jax.enable_x64(True):
      p = self._point()
      margins = gradcheck.check_with_mutations(
          self._f, p, jax.grad(self._f)(p), key=jax.random.key(1))
      self.assertLess(margins["true"], 1e-2)
      self.assertGreater(min(v for k, v in margins.items() if k != "true"),
                         10.0)

  def test_zero_and_wrong_gradients_raise(self):
    with jax.enable_x64(True):
      p = self._point()
      g = jax.grad(self._f)(p)
      with self.assertRaisesRegex(AssertionError, "gradient is zero"):
        gradcheck.check_directional(lambda q: jnp.sum(q["a"]) * 0.0, p,
                                    jax.tree.map(jnp.zeros_like, g),
                                    key=jax.random.key(1))
      wrong = {**g, "b": g["b"] * 1.01}  # 1% off in one leaf.
      with self.assertRaisesRegex(AssertionError, r"disagrees.*\['b'\]"):
        gradcheck.check_directional(self._f, p, wrong, key=jax.random.key(1))

  def test_float32_values_are_found(self):
    with jax.enable_x64(True):
      p = self._point()

      def leaky(q):  # a float32 step inside a loop, on a carry.
        def body(c, a):
          return jnp.sin(c.astype(jnp.float32)).astype(jnp.float64) + a, None
        return jnp.sum(jax.lax.scan(body, jnp.zeros(2), q["a"])[0])
      with self.assertRaisesRegex(AssertionError, "not float64.*float32"):
        gradcheck.assert_float64(leaky, p)
      gradcheck.assert_float64(self._f, p)
    with self.assertRaisesRegex(AssertionError, "enable_x64"):
      gradcheck.assert_float64(self._f, p)


class DDMetaGradientTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("mlp_vmap", 0, 0, {}),
      ("mlp_one_at_a_time", 1, 1, {}),
      ("convnet", 2, 0, CONVNET),
  )
  def test_images_and_lrs(self, seed, init_group, kw):
    with jax.enable_x64(True):
      case = dd_case(seed, init_group, **kw)
      self.assertEqual(set(case.grad), {"x", "raw_lr"})
      _check(case, seed)

  def test_soft_labels_flip_rotate_inner_adam(self):
    with jax.enable_x64(True):
      case = dd_case(3, learn_labels=True, syn_aug="flip_rotate",
                     real_aug="flip_rotate", inner_opt="adam", lr_init=0.01)
      self.assertEqual(set(case.grad), {"x", "raw_lr", "y"})
      _check(case, 3)


class RatWindowGradientTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("sgd_mlp", dict(inner_opt="sgd"), False),
      ("adam_convnet", dict(arch="convnet", depth=1, inner_opt="adam",
                            inner_lr=0.01), False),
      ("gd_learned_lrs", dict(inner_opt="gd", learn_lr=True), True),
  )
  def test_window_after_forward_only_prefix(self, kw, burn_in_matters):
    with jax.enable_x64(True):
      case = rat_case(rat_config(**kw))
      if "raw_lr" in case.grad:  # windows [2, 4) and [1, 3): step 0's lr
        # is only ever used in a burn-in.
        self.assertEqual(float(case.grad["raw_lr"][0]), 0.0)
      _check(case)
      if burn_in_matters:  # so the test needs the detached burn-in: the
        # differences of the full loss do not match the truncated gradient.
        with self.assertRaisesRegex(AssertionError, "disagrees"):
          gradcheck.check_directional(case.f_full, case.params, case.grad,
                                      key=jax.random.key(7), eps=EPS,
                                      rtol=RTOL)

  def test_boost_fixed_blocks(self):
    with jax.enable_x64(True):
      cfg = rat_config(ipc=1, boost_blocks=2, boost_beta=0.1,
                       batch_per_class=2)
      case = rat_case(cfg, fixed_blocks=1, seed=1)
      self.assertEqual(set(case.grad), {"x"})  # the learned block only.
      chex.assert_shape(case.grad["x"], (NUM_CLASSES, 1, *MLP_SHAPE))
      _check(case, 1)

  def test_learned_soft_labels(self):
    with jax.enable_x64(True):
      case = rat_case(rat_config(learn_labels=True), seed=2)
      self.assertEqual(set(case.grad), {"x", "y"})
      _check(case, 2)

  def test_flip_rotate_augmentation(self):
    with jax.enable_x64(True):
      cfg = rat_config(syn_aug="flip_rotate", real_aug="flip_rotate")
      case = rat_case(cfg, seed=3)
      _check(case, 3)  # the core's loss is the reference's, and with the
      # augmentations off the reference's loss differs: they are on.
      plain = case.reference(syn_aug="none", real_aug="none")
      self.assertGreater(abs(case.loss - float(jax.jit(plain)(case.params))),
                         1e-6)


if __name__ == "__main__":
  absltest.main()
