"""Decoupled recover pieces: loss terms, schedules, crops, pixels.

Hand-computed BN-matching and CE values; CDA crop curriculum and DELT round
partition numbers (METHODS.md C.2, C.5); the DELT init order; torchvision-
style RandomResizedCrop (against a numpy crop-then-bilinear reference),
flip, roll, CutMix and Mixup; the recover gradient of CE + r_bn * BN on a
hand-written stand-in teacher against float64 central differences (with
the power test of `gradcheck.check_with_mutations`); pixel clipping and
the JPEG round trip.
"""

import functools
import math

from absl.testing import absltest
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data import crops
from distill_jax.methods.decoupled import pixels
from distill_jax.methods.decoupled import schedules
from distill_jax.methods.decoupled import terms
from tests import gradcheck


class _Strict(absltest.TestCase):
  """Runs every test with implicit rank promotion as an error."""

  def setUp(self):
    super().setUp()
    self.enter_context(jax.numpy_rank_promotion("raise"))

# --------------------------------------------------------------- helpers.


def _moments(h):
  """Per-channel mean and biased variance over (N, H, W)."""
  return jnp.mean(h, axis=(0, 1, 2)), jnp.var(h, axis=(0, 1, 2))


def _standin(weights, stats, x):
  """A tiny eval-mode teacher: stat -> conv -> stat -> BN(running) -> head.

  Returns (logits, aux) with aux["moments"] = ((mean, var) of the pixels,
  (mean, var) of the conv output), the inputs of its two "BN" layers.
  """
  m0 = _moments(x)
  h = jax.lax.conv_general_dilated(
      x, weights["conv"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  m1 = _moments(h)
  rm, rv = stats[1]
  hn = (h - rm.reshape(1, 1, 1, -1)) / jnp.sqrt(rv.reshape(1, 1, 1, -1) +
                                                1e-5)
  feats = jnp.mean(jnp.tanh(hn), axis=(1, 2))
  return feats @ weights["dense"], {"moments": (m0, m1)}


def _torch_resized_crop(img, top, left, h, w):
  """numpy: crop img (H, W, C) then bilinear resize to (H, W),
  align_corners=False (torch `interpolate`, source clamped at 0 and the
  last pixel)."""
  crop = img[top:top + h, left:left + w]
  out_h, out_w = img.shape[:2]

  def axis_weights(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
      src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
      lo = min(int(math.floor(src)), n_in - 1)
      hi = min(lo + 1, n_in - 1)
      frac = src - lo
      m[o, lo] += 1 - frac
      m[o, hi] += frac
    return m
  wy, wx = axis_weights(h, out_h), axis_weights(w, out_w)
  return np.einsum("oh,hwc,pw->opc", wy, crop, wx)


# ------------------------------------------------------------------ terms.


class TermsTest(_Strict):

  def setUp(self):
    super().setUp()
    # Layer 1: ||(1, 2)|| + ||(3, 4)|| = sqrt(5) + 5; layer 2:
    # ||(1, 1, 1, 1)|| + ||(3, 0, 0, -4)|| = 2 + 5.
    self.moments = ((jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0])),
                    (jnp.ones(4), jnp.array([3.0, 0.0, 0.0, 0.0])))
    self.running = ((jnp.zeros(2), jnp.zeros(2)),
                    (jnp.zeros(4), jnp.array([0.0, 0.0, 0.0, 4.0])))
    self.aux = {"moments": self.moments}

  def test_bn_match_by_hand(self):
    v = terms.bn_match()(None, self.aux, None, self.running)
    self.assertAlmostEqual(float(v), 10 * (5 + math.sqrt(5)) + 7, places=4)
    v1 = terms.bn_match(1.0)(None, self.aux, None, self.running)
    self.assertAlmostEqual(float(v1), 5 + math.sqrt(5) + 7, places=4)
    # Not the squared norms (10 * (5 + 25) + 4 + 25).
    self.assertNotAlmostEqual(float(v), 329.0, places=0)
    chex.assert_trees_all_close(
        terms.bn_layer_losses(self.moments, self.running),
        jnp.array([5 + math.sqrt(5), 7.0]), rtol=1e-6)

  def test_bn_match_checks_layers(self):
    with self.assertRaisesRegex(ValueError, "forward order"):
      terms.bn_match()(None, self.aux, None, self.running[:1])
    with self.assertRaisesRegex(ValueError, "shapes"):
      terms.bn_match()(None, self.aux, None, self.running[::-1])

  def test_bn_norm_gradient_is_zero_not_nan_at_match(self):
    g = jax.grad(lambda mu: terms.bn_match()(
        None, {"moments": ((mu, jnp.ones(2)),)}, None,
        ((jnp.zeros(2), jnp.ones(2)),)))(jnp.zeros(2))
    chex.assert_trees_all_equal(g, jnp.zeros(2))

  def test_ce(self):
    logits = jnp.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    y = jnp.array([1, 0])
    want = 0.5 * (-math.log(0.75) + math.log(2.0))
    self.assertAlmostEqual(float(terms.ce(logits, {}, y, None)), want,
                           places=6)
    soft = jax.nn.one_hot(y, 2)
    self.assertAlmostEqual(float(terms.ce(logits, {}, soft, None)), want,
                           places=6)

  def test_terms_combinator(self):
    logits = jnp.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    y = jnp.array([1, 0])
    ce = float(terms.ce(logits, {}, y, None))
    bn = 10 * (5 + math.sqrt(5)) + 7
    t = terms.sre2l(r_bn=0.01)
    self.assertEqual(t.names, ("ce", "bn"))
    total, values = t(logits, self.aux, y, self.running)
    self.assertAlmostEqual(float(total), ce + 0.01 * bn, places=5)
    self.assertAlmostEqual(float(values["ce"]), ce, places=6)
    self.assertAlmostEqual(float(values["bn"]), bn, places=4)
    const = lambda *a: jnp.asarray(2.0)
    t2 = t.add("extra", const, 0.5)
    total2, values2 = t2(logits, self.aux, y, self.running)
    self.assertAlmostEqual(float(total2), float(total) + 1.0, places=5)
    self.assertEqual(sorted(values2), ["bn", "ce", "extra"])
    with self.assertRaisesRegex(ValueError, "unique"):
      t2.add("ce", const)
    # Traced weights.
    f = jax.jit(lambda w: terms.Terms().add("ce", terms.ce, w)(
        logits, {}, y, None)[0])
    self.assertAlmostEqual(float(f(3.0)), 3 * ce, places=5)

  def test_image_priors(self):
    x = jnp.zeros((2, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
    aux = terms.with_inputs({}, x)
    # The lone pixel has 2 neighbours per difference direction: 4 * sqrt(2).
    self.assertAlmostEqual(float(terms.tv_l2(None, aux, None)),
                           4 * math.sqrt(2), places=5)
    self.assertAlmostEqual(float(terms.l2(None, aux, None)), 0.5, places=6)
    t = terms.sre2l(tv_l2_weight=1e-4, l2_weight=1e-5)
    self.assertEqual(t.names, ("ce", "bn", "tv_l2", "l2"))

  def test_running_stats_in_call_order(self):

    class Block(nn.Module):

      @nn.compact
      def __call__(self, x):
        return nn.BatchNorm(use_running_average=True)(nn.Conv(3, (1, 1))(x))

    class Net(nn.Module):

      @nn.compact
      def __call__(self, x, train=False):
        del train
        x = nn.BatchNorm(use_running_average=True, name="zz_stem")(x)
        for _ in range(2):
          x = Block()(x)
        return x

    net, x = Net(), jnp.ones((2, 4, 4, 1))
    v = net.init(jax.random.key(0), x)
    order = terms.bn_call_order(net, v, x, train=False)
    self.assertEqual(order, (("zz_stem",), ("Block_0", "BatchNorm_0"),
                             ("Block_1", "BatchNorm_0")))
    stats = terms.running_stats(v["batch_stats"], order)
    self.assertEqual([m.shape for m, _ in stats], [(1,), (3,), (3,)])
    with self.assertRaises(KeyError):
      terms.running_stats(v["batch_stats"], [("nope",)])


# --------------------------------------------------------- recover grad.


class RecoverGradientTest(_Strict):

  def test_ce_plus_bn_matches_finite_differences(self):
    with jax.enable_x64(True):
      k = jax.random.split(jax.random.key(0), 6)
      n, hw, c, f, classes = 4, 6, 2, 3, 3
      weights = gradcheck.to_f64({
          "conv": 0.5 * jax.random.normal(k[0], (3, 3, c, f)),
          "dense": jax.random.normal(k[1], (f, classes))})
      stats = gradcheck.to_f64((
          (jnp.array([0.1, -0.2]), jnp.array([0.8, 1.3])),
          (0.1 * jax.random.normal(k[2], (f,)),
           1.0 + jax.random.uniform(k[3], (f,)))))
      x = gradcheck.to_f64(jax.random.normal(k[4], (n, hw, hw, c)))
      y = jnp.array([0, 1, 2, 0])
      # A fixed per-batch augmentation: 4x5 box, flip, roll (1, 2).
      aug = crops.AugParams(
          crop=crops.CropParams(*(jnp.full((n,), v, jnp.int32)
                                  for v in (1, 0, 4, 5))),
          flips=jnp.ones((n,), bool),
          shifts=jnp.broadcast_to(jnp.array([1, 2], jnp.int32), (n, 2)))
      objective = terms.sre2l(r_bn=0.5)

      def parts(x):
        xa = crops.apply_augment(x, aug)
        logits, aux = _standin(weights, stats, xa)
        return objective(logits, aux, y, stats)

      loss = lambda x: parts(x)[0]
      g = jax.grad(loss)(x)
      g_ce = jax.grad(lambda x: parts(x)[1]["ce"])(x)
      g_bn = jax.grad(lambda x: 0.5 * parts(x)[1]["bn"])(x)
      chex.assert_trees_all_close(g_ce + g_bn, g, atol=1e-12)
      prbs = gradcheck.probes(loss, x, key=jax.random.key(7))
      res = gradcheck.compare(g, prbs)
      self.assertTrue(res.ok, res.message)
      # The check has power: it rejects the zeroed, negated and halved
      # gradient, and the gradient of either term alone.
      wrong = {**gradcheck.mutations(g), "ce only": g_ce, "bn only": g_bn}
      for name, bad in wrong.items():
        self.assertFalse(gradcheck.compare(bad, prbs).ok, name)


# -------------------------------------------------------------- schedules.


class SchedulesTest(_Strict):

  def test_cosine_lr(self):
    for t, want in ((0, 0.25), (500, 0.125), (250, 0.125 * (1 + 0.5**0.5)),
                    (1000, 0.0)):
      self.assertAlmostEqual(float(schedules.cosine_lr(0.25, t, 1000)), want,
                             places=6)

  def test_min_crop_by_hand(self):
    c = lambda x: 0.08 + 0.92 * (1 + math.cos(math.pi * x)) / 2
    cases = [  # (t, total, milestone, mode, expected)
        (0, 100, 1.0, "cosine", 1.0),
        (25, 100, 1.0, "cosine", 0.08 + 0.92 * (1 + 0.5**0.5) / 2),
        (50, 100, 1.0, "cosine", 0.54),
        (99, 100, 1.0, "cosine", c(0.99)),
        (100, 100, 1.0, "cosine", 0.08),
        (25, 100, 0.5, "cosine", 0.54),
        (49, 100, 0.5, "cosine", c(49 / 50)),
        (50, 100, 0.5, "cosine", 0.08),
        (0, 100, 1.0, "linear", 1.0),
        (25, 100, 1.0, "linear", 0.77),
        (25, 100, 0.5, "linear", 0.54),
        (75, 100, 0.5, "linear", 0.08),
        (0, 100, 0.5, "step", 1.0),
        (49, 100, 0.5, "step", 1.0),
        (50, 100, 0.5, "step", 0.08),
        (3500, 4000, 1.0, "cosine", c(3500 / 4000)),  # DELT: about 0.115.
    ]
    for t, total, m, mode, want in cases:
      got = float(schedules.min_crop(t, total, m, mode))
      self.assertAlmostEqual(got, want, places=5, msg=(t, total, m, mode))
    self.assertAlmostEqual(c(3500 / 4000), 0.1150, places=3)
    # Milestone 0 (the flag default): 0.08 from the first iteration.
    for mode in schedules.MODES:
      for t in (0, 1, 50, 99):
        self.assertAlmostEqual(
            float(schedules.min_crop(t, 100, 0.0, mode)), 0.08, places=6)
    # Floor 0.25 (28 px, METHODS.md C.7).
    self.assertAlmostEqual(
        float(schedules.min_crop(50, 100, 1.0, "cosine", floor=0.25)),
        0.625, places=6)
    with self.assertRaises(ValueError):
      schedules.min_crop(0, 100, 1.0, "exp")

  def test_min_crop_traced(self):
    f = jax.jit(lambda t: schedules.min_crop(t, 100, 1.0, "cosine"))
    self.assertAlmostEqual(float(f(50)), 0.54, places=5)
    self.assertAlmostEqual(float(f(0)), 1.0, places=5)

  def test_delt_partition(self):
    self.assertEqual(schedules.num_rounds(4000, 500), 8)
    self.assertEqual(schedules.round_sizes(50, 8), (7, 7, 6, 6, 6, 6, 6, 6))
    self.assertEqual(schedules.round_sizes(10, 8), (2, 2, 1, 1, 1, 1, 1, 1))
    self.assertEqual(schedules.round_sizes(3, 8), (1, 1, 1, 0, 0, 0, 0, 0))
    self.assertEqual(schedules.group_iterations(8, 500),
                     (4000, 3500, 3000, 2500, 2000, 1500, 1000, 500))
    np.testing.assert_array_equal(
        schedules.image_iterations(10, 8, 500),
        [4000, 4000, 3500, 3500, 3000, 2500, 2000, 1500, 1000, 500])
    it50 = schedules.image_iterations(50, 8, 500)
    self.assertEqual(list(np.bincount(it50 // 500, minlength=9)[1:][::-1]),
                     [7, 7, 6, 6, 6, 6, 6, 6])
    self.assertEqual(schedules.total_image_iterations(50, 8, 500), 115_500)
    self.assertEqual(schedules.total_image_iterations(10, 8, 500), 25_500)
    self.assertEqual(
        schedules.total_image_iterations(10, 8, 500, num_classes=10), 255_000)

  def test_delt_partition_matches_code(self):
    # A transcription of DELT `get_round_imgs_indx` (C.5).
    for ipc, rounds in ((50, 8), (10, 8), (3, 8), (8, 8), (13, 4), (1, 8)):
      bounds = np.ones(rounds, int) * (ipc // rounds)
      bounds[:ipc % rounds] += 1
      bounds = np.cumsum(bounds)
      want = [int(np.nonzero(i < bounds)[0][0]) for i in range(ipc)]
      np.testing.assert_array_equal(schedules.start_rounds(ipc, rounds), want)

  def test_delt_active_mask(self):
    idx = np.tile(np.arange(10), 2)  # Class-grouped: 2 classes x IPC 10.
    count = lambda t: int(schedules.active_mask(t, idx, 10, 8, 500).sum())
    for t, per_class in ((0, 2), (499, 2), (500, 4), (999, 4), (1000, 5),
                         (3499, 9), (3500, 10), (3999, 10)):
      self.assertEqual(count(t), 2 * per_class, msg=t)
    m = schedules.active_mask(500, idx, 10, 8, 500)
    np.testing.assert_array_equal(np.nonzero(np.asarray(m))[0],
                                  [0, 1, 2, 3, 10, 11, 12, 13])
    np.testing.assert_array_equal(schedules.active_indices(1, idx, 10, 8),
                                  [0, 1, 2, 3, 10, 11, 12, 13])
    traced = jax.jit(lambda t: schedules.active_mask(t, idx, 10, 8, 500))
    np.testing.assert_array_equal(traced(1000), count_mask(1000, idx))

  def test_init_order(self):
    scores = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8]
    # Ascending: idx 1, 5, 3, 2, 4, 6, 0; mid = ceil(7 / 2) = 4; positions
    # 4, 5, 3, 6, 2 -> indices 4, 6, 2, 0, 3.
    self.assertEqual(schedules.medium_positions(7, 5), (4, 5, 3, 6, 2))
    self.assertEqual(schedules.medium_positions(8, 4), (4, 5, 3, 6))
    np.testing.assert_array_equal(schedules.init_order(scores, 5),
                                  [4, 6, 2, 0, 3])
    np.testing.assert_array_equal(schedules.init_order(scores, 3, "top"),
                                  [0, 6, 4])
    np.testing.assert_array_equal(schedules.init_order(scores, 3, "min"),
                                  [1, 5, 3])
    with self.assertRaisesRegex(ValueError, "outside"):
      schedules.init_order(scores, 6)  # Position 7 of 7.
    with self.assertRaises(ValueError):
      schedules.init_order(scores, 2, "median")


def count_mask(t, idx):
  """Reference active mask: start round of within-class index i <= t // 500
  (IPC 10 over 8 rounds: start rounds 0,0,1,1,2,...,7)."""
  start = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7])
  return start[idx] <= t // 500


# ------------------------------------------------------------------ crops.


class CropsTest(_Strict):

  def setUp(self):
    super().setUp()
    self.x = jax.random.normal(jax.random.key(0), (6, 8, 8, 2))

  def test_identity_crop(self):
    p = crops.full_crop(6, 8, 8)
    for edge in ("clamp", "bleed"):
      chex.assert_trees_all_close(crops.apply_rrc(self.x, p, edge=edge),
                                  self.x, atol=1e-6)
    # Sampling with scale (1, 1) and ratio (1, 1) draws the full box.
    y, q = jax.jit(functools.partial(
        crops.random_resized_crop, min_scale=1.0, max_scale=1.0,
        ratio=(1.0, 1.0)))(jax.random.key(0), self.x)
    chex.assert_trees_all_equal(q, p)
    chex.assert_trees_all_close(y, self.x, atol=1e-6)

  def test_matches_crop_then_bilinear(self):
    boxes = [(1, 0, 4, 5), (2, 3, 6, 4), (0, 0, 8, 8), (5, 6, 3, 2),
             (0, 1, 7, 7), (3, 3, 1, 1)]
    p = crops.CropParams(*(jnp.array(col, jnp.int32)
                           for col in zip(*boxes)))
    y = np.asarray(crops.apply_rrc(self.x, p))
    x = np.asarray(self.x, np.float64)
    for i, b in enumerate(boxes):
      np.testing.assert_allclose(y[i], _torch_resized_crop(x[i], *b),
                                 atol=1e-5, err_msg=str(b))
    # "bleed" differs only at the box border.
    yb = np.asarray(crops.apply_rrc(self.x, p, edge="bleed"))
    self.assertGreater(np.abs(yb[0] - y[0]).max(), 1e-3)
    np.testing.assert_allclose(yb[0, 1:-1, 1:-1], y[0, 1:-1, 1:-1],
                               atol=1e-5)

  def test_box_sampling(self):
    key = jax.random.key(1)
    sample = jax.jit(crops.sample_rrc_params, static_argnums=(1, 2, 3),
                     static_argnames=("per_image",))
    p = sample(key, 200, 8, 10, min_scale=0.08)
    top, left, h, w = (np.asarray(a) for a in (p.top, p.left, p.height,
                                               p.width))
    self.assertTrue(((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0)).all())
    self.assertTrue(((top + h <= 8) & (left + w <= 10)).all())
    self.assertGreater(len(set(zip(top, left, h, w))), 20)
    # Fixed area 1/4 of 16 x 16: h w within rounding of 64, ratio in range.
    q = sample(key, 100, 16, 16, min_scale=0.25, max_scale=0.25)
    area = np.asarray(q.height * q.width)
    self.assertTrue(((area >= 49) & (area <= 81)).all(), area)
    ratio = np.asarray(q.width) / np.asarray(q.height)
    self.assertTrue(((ratio > 0.6) & (ratio < 1.6)).all())
    y = jax.jit(crops.apply_rrc)(self.x, sample(key, 6, 8, 8))
    chex.assert_shape(y, self.x.shape)

  def test_per_batch_and_per_image(self):
    key = jax.random.key(2)
    sample = jax.jit(crops.sample_rrc_params, static_argnums=(1, 2, 3),
                     static_argnames=("per_image",))
    aug = jax.jit(crops.sample_augment, static_argnums=(1, 2, 3),
                  static_argnames=("jitter", "per_image"))
    pb = sample(key, 6, 8, 8, per_image=False)
    for a in (pb.top, pb.left, pb.height, pb.width):
      self.assertLen(set(np.asarray(a).tolist()), 1)
    pi = sample(key, 6, 8, 8, per_image=True)
    boxes = set(zip(*(np.asarray(a).tolist() for a in
                      (pi.top, pi.left, pi.height, pi.width))))
    self.assertGreater(len(boxes), 1)
    ab = aug(key, 6, 8, 8, jitter=3)
    self.assertLen(set(np.asarray(ab.flips).tolist()), 1)
    self.assertLen({tuple(s) for s in np.asarray(ab.shifts).tolist()}, 1)
    ai = aug(jax.random.key(4), 64, 8, 8, jitter=3, per_image=True)
    self.assertLen(set(np.asarray(ai.flips).tolist()), 2)
    self.assertGreater(len({tuple(s) for s in
                            np.asarray(ai.shifts).tolist()}), 1)

  def test_gradient(self):
    w = jax.random.normal(jax.random.key(3), self.x.shape)
    for per_image in (False, True):
      g = jax.jit(jax.grad(lambda x, pi=per_image: jnp.sum(w * crops.augment(
          jax.random.key(5), x, per_image=pi, jitter=2)[0])))(self.x)
      chex.assert_tree_all_finite(g)
      self.assertGreater(float(jnp.abs(g).sum()), 0.0)

  def test_traced_min_scale(self):
    traces = []

    @jax.jit
    def boxes(key, min_scale):
      traces.append(1)
      p = crops.sample_rrc_params(key, 300, 16, 16, min_scale=min_scale)
      return p.height * p.width

    big = np.asarray(boxes(jax.random.key(0), 0.9))
    small = np.asarray(boxes(jax.random.key(0), 0.08))
    self.assertLen(traces, 1)
    self.assertGreaterEqual(big.min(), 0.8 * 256)
    self.assertLess(small.min(), 0.3 * 256)
    f = jax.jit(lambda k, x, t: crops.augment(
        k, x, min_scale=schedules.min_crop(t, 100), jitter=1)[0])
    chex.assert_shape(f(jax.random.key(1), self.x, 10), self.x.shape)

  def test_flip_and_roll(self):
    flips = crops.sample_flips(jax.random.key(0), 6)
    chex.assert_trees_all_equal(
        crops.apply_flip(crops.apply_flip(self.x, flips), flips), self.x)
    on = crops.apply_flip(self.x, jnp.ones(6, bool))
    chex.assert_trees_all_equal(on, self.x[:, :, ::-1])
    roll = jax.jit(crops.roll)
    for s in ((1, 2), (-3, 0), (9, -1)):
      chex.assert_trees_all_equal(
          roll(self.x, jnp.array(s)),
          np.roll(np.asarray(self.x), s, axis=(1, 2)))
    shifts = jnp.array([[0, 0], [1, 0], [0, 1], [2, 3], [-1, 5], [7, 7]])
    y = jax.jit(crops.apply_roll)(self.x, shifts)
    for i, s in enumerate(np.asarray(shifts)):
      chex.assert_trees_all_equal(
          y[i], np.roll(np.asarray(self.x[i]), tuple(s), axis=(0, 1)))
    s = np.asarray(crops.sample_shifts(jax.random.key(1), 400, 2))
    self.assertEqual(set(s.ravel().tolist()), {0, 1, 2})
    s = np.asarray(crops.sample_shifts(jax.random.key(1), 400, (-1, 1)))
    self.assertEqual(set(s.ravel().tolist()), {-1, 0, 1})

  def test_cutmix(self):
    x = jnp.arange(6.0)[:, None, None, None] + jnp.zeros((6, 8, 8, 1))
    f = jax.jit(crops.cutmix)
    for seed in range(5):
      y, p = f(jax.random.key(seed), x)
      chex.assert_shape(y, x.shape)
      self.assertTrue(0.0 <= float(p.lam) <= 1.0)
      self.assertTrue(0.0 <= float(p.lam_area) <= 1.0)
      perm = np.asarray(p.perm)
      self.assertEqual(sorted(perm.tolist()), list(range(6)))
      top, left, bottom, right = np.asarray(p.box).tolist()
      own = np.asarray(y) == np.asarray(x)
      for i in range(6):
        if perm[i] == i:
          continue
        pasted = ~own[i, :, :, 0]
        want = np.zeros((8, 8), bool)
        want[top:bottom, left:right] = True
        np.testing.assert_array_equal(pasted, want)
        self.assertAlmostEqual(1 - pasted.mean(), float(p.lam_area),
                               places=6)
        np.testing.assert_array_equal(np.asarray(y)[i][want], float(perm[i]))
    chex.assert_trees_all_equal(crops.apply_mix(x, p), y)  # Replay.

  def test_mixup_and_targets(self):
    y, p = jax.jit(crops.mixup)(jax.random.key(0), self.x)
    chex.assert_shape(y, self.x.shape)
    lam = float(p.lam)
    self.assertTrue(0.0 <= lam <= 1.0)
    chex.assert_trees_all_close(
        y, lam * self.x + (1 - lam) * self.x[p.perm], atol=1e-6)
    t = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    mt = crops.mix_targets(t, p)
    chex.assert_trees_all_close(mt.sum(-1), jnp.ones(6), atol=1e-6)
    chex.assert_trees_all_close(mt, lam * t + (1 - lam) * t[p.perm],
                                atol=1e-6)
    lams = jax.vmap(lambda k: crops.sample_mixup(k, 4).lam)(
        jax.random.split(jax.random.key(1), 200))
    self.assertTrue(bool(jnp.all((lams >= 0) & (lams <= 1))))
    self.assertGreater(float(jnp.std(lams)), 0.2)  # Beta(0.8, 0.8): 0.31.


# ----------------------------------------------------------------- pixels.


class PixelsTest(_Strict):

  def test_clip_pixels(self):
    lo, hi = pixels.clip_bounds(0.1307, 0.3081)
    self.assertAlmostEqual(float(lo[0]), -0.4242, places=4)
    self.assertAlmostEqual(float(hi[0]), 2.8215, places=4)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    x = 10 * jax.random.normal(jax.random.key(0), (4, 5, 5, 3))
    y = np.asarray(pixels.clip_pixels(x, mean, std))
    lo, hi = (np.asarray(b) for b in pixels.clip_bounds(mean, std))
    np.testing.assert_allclose(y.min((0, 1, 2)), lo, rtol=1e-6)
    np.testing.assert_allclose(y.max((0, 1, 2)), hi, rtol=1e-6)
    inside = (np.asarray(x) >= lo) & (np.asarray(x) <= hi)
    np.testing.assert_array_equal(y[inside], np.asarray(x)[inside])
    np.testing.assert_allclose(y * np.array(std) + np.array(mean),
                               np.clip(np.asarray(x) * std + np.array(mean),
                                       0, 1), atol=1e-6)

  def test_quantize_jpeg(self):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    for c in (1, 3):
      img = np.stack([0.5 + 0.4 * np.sin(3 * yy + 2 * xx + k)
                      for k in range(c)], -1)[None].repeat(2, 0)
      img = np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, 1)
      m, s = np.linspace(0.3, 0.5, c), np.linspace(0.2, 0.3, c)
      xn = ((img - m) / s).astype(np.float32)
      out = pixels.quantize_jpeg(jnp.asarray(xn), m, s, quality=95)
      self.assertEqual(out.dtype, np.float32)
      self.assertEqual(out.shape, xn.shape)
      err = np.abs(out * s + m - img)
      self.assertLess(err.mean(), 0.05)
      if c == 1:
        self.assertLess(err.max(), 0.05)
      # The result lies on the uint8 grid.
      grid = (out.astype(np.float64) * s + m) * 255
      np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)
      err75 = np.abs(pixels.quantize_jpeg(xn, m, s) * s + m - img).mean()
      self.assertGreater(err75, err.mean())


if __name__ == "__main__":
  absltest.main()
