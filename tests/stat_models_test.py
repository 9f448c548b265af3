"""Networks with BatchNorm running statistics: moments, modes, shapes, grads."""

import json

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from distill_jax.nn import batchnorm
from distill_jax.nn import stat_models

EPS = 1e-5


def _np_conv(x, w, b, pad):
  """Stride-1 convolution in numpy (NHWC x HWIO), float64."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros(x.shape[:1] + (ho, wo, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += x[:, i:i + ho, j:j + wo, :] @ w[i, j]
  return out + b


def _np_convnet(variables, x, train, first_pad):
  """convnet_bn in numpy; returns logits, BN inputs and new running stats."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  s = jax.tree.map(lambda a: np.asarray(a, np.float64),
                   variables["batch_stats"])
  x = np.asarray(x, np.float64)
  bn_inputs, new_stats, d = [], {}, 0
  while f"Conv_{d}" in p:
    conv, bn = p[f"Conv_{d}"], p[f"BatchNorm_{d}"]
    x = _np_conv(x, conv["kernel"], conv["bias"], first_pad if d == 0 else 1)
    bn_inputs.append(x)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    run = s[f"BatchNorm_{d}"]
    n = x.size // x.shape[-1]
    new_stats[f"BatchNorm_{d}"] = {
        "mean": 0.9 * run["mean"] + 0.1 * mean,
        "var": 0.9 * run["var"] + 0.1 * var * n / (n - 1)}
    if not train:
      mean, var = run["mean"], run["var"]
    x = (x - mean) / np.sqrt(var + EPS) * bn["scale"] + bn["bias"]
    x = np.maximum(x, 0)
    nb, h, w, c = x.shape
    x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(nb, h // 2, 2, w // 2, 2, c)
    x = x.mean(axis=(2, 4))
    d += 1
  x = x.reshape(x.shape[0], -1)
  logits = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  return logits, bn_inputs, new_stats


def _randomise_stats(variables, key):
  """Random running stats and BN affine parameters (not the identity)."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(key, len(leaves))
  new = [l + 0.3 * jax.random.uniform(k, l.shape) for l, k in
         zip(leaves, keys)]
  return jax.tree.unflatten(tree, new)


def _tiny_convnet(depth=2, width=3, shape=(9, 9, 2), classes=4, key=0):
  model = stat_models.build(arch="convnet_bn", num_classes=classes,
                            image_shape=shape, width=width, depth=depth)
  variables = _randomise_stats(model.init(jax.random.key(key)),
                               jax.random.key(key + 1))
  return model, variables


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames="train")


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


class MomentsAndModesTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_moments_and_logits_match_numpy(self, train):
    """Moments are mean / biased var of each BN input over (N, H, W) in both
    modes; logits equal a numpy forward using batch (train) or running
    (eval) statistics."""
    model, variables = _tiny_convnet()
    x = jax.random.normal(jax.random.key(2), (5, 9, 9, 2))
    logits, aux = model.apply(variables, x, train=train)
    ref_logits, bn_inputs, _ = _np_convnet(variables, x, train, 1)
    self.assertLen(aux["moments"], 2)
    for (mean, var), inp in zip(aux["moments"], bn_inputs):
      chex.assert_shape((mean, var), (3,))
      self.assertLess(_max_rel(mean, inp.mean(axis=(0, 1, 2))), 1e-5)
      self.assertLess(_max_rel(var, inp.var(axis=(0, 1, 2))), 1e-5)
    self.assertLess(_max_rel(logits, ref_logits), 1e-4)

  def test_first_pad_three_on_28px_moments(self):
    model = stat_models.build(arch="convnet_bn", num_classes=3,
                              image_shape=(28, 28, 1), width=2, depth=1)
    self.assertEqual(model.spec["first_pad"], 3)
    variables = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    _, aux = model.apply(variables, x)
    _, bn_inputs, _ = _np_convnet(variables, x, False, 3)
    self.assertEqual(bn_inputs[0].shape, (2, 32, 32, 2))
    self.assertLess(_max_rel(aux["moments"][0][1],
                             bn_inputs[0].var(axis=(0, 1, 2))), 1e-5)
    chex.assert_shape(aux["features"], (2, 2 * 16 * 16))

  def test_train_updates_running_stats_by_pytorch_rule(self):
    """running = 0.9 running + 0.1 batch, with the unbiased batch variance."""
    model, variables = _tiny_convnet()
    x = jax.random.normal(jax.random.key(3), (4, 9, 9, 2)) * 2 + 1
    _, aux = model.apply(variables, x, train=True)
    _, bn_inputs, expected = _np_convnet(variables, x, True, 1)
    chex.assert_trees_all_close(aux["batch_stats"], expected, rtol=1e-5)
    # The biased variance in the update would differ by a factor n/(n-1).
    n = bn_inputs[0].size // 3
    old = np.asarray(variables["batch_stats"]["BatchNorm_0"]["var"])
    biased = 0.9 * old + 0.1 * bn_inputs[0].var(axis=(0, 1, 2))
    unbiased = 0.9 * old + 0.1 * bn_inputs[0].var(axis=(0, 1, 2), ddof=1)
    got = np.asarray(aux["batch_stats"]["BatchNorm_0"]["var"])
    np.testing.assert_allclose(got, unbiased, rtol=1e-5)
    gap = 0.1 * bn_inputs[0].var(axis=(0, 1, 2)) / (n - 1)  # unbiased-biased
    np.testing.assert_allclose(got - biased, gap, rtol=1e-2)
    # Eval mode returns the statistics it was given.
    _, aux_eval = model.apply(variables, x, train=False)
    chex.assert_trees_all_equal(aux_eval["batch_stats"],
                                variables["batch_stats"])

  def test_eval_uses_running_stats_and_ignores_the_batch(self):
    model, variables = _tiny_convnet()
    apply = _jit_apply(model)
    x = jax.random.normal(jax.random.key(4), (4, 9, 9, 2))
    other = x.at[1:].set(jax.random.normal(jax.random.key(5), (3, 9, 9, 2)))
    out = apply(variables, x)[0]
    np.testing.assert_allclose(apply(variables, other)[0][0], out[0],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(apply(variables, x[:1])[0][0], out[0],
                               rtol=1e-6, atol=1e-6)
    shifted = jax.tree.map(lambda a: a + 0.5, variables["batch_stats"])
    moved = apply({**variables, "batch_stats": shifted}, x)[0]
    self.assertGreater(np.abs(moved - out).max(), 1e-3)
    # Train mode normalises with the batch: other images matter, running
    # statistics do not.
    train_out = apply(variables, x, train=True)[0]
    self.assertGreater(
        np.abs(apply(variables, other, train=True)[0][0] -
               train_out[0]).max(), 1e-4)
    np.testing.assert_allclose(
        apply({**variables, "batch_stats": shifted}, x,
                    train=True)[0], train_out, rtol=1e-6, atol=1e-6)

  def test_vmap_over_batches(self):
    model, variables = _tiny_convnet()
    xs = jax.random.normal(jax.random.key(6), (3, 4, 9, 9, 2))
    for train in (False, True):
      f = jax.jit(jax.vmap(lambda x, t=train: model.apply(variables, x,
                                                          train=t),
                           in_axes=0))
      logits, aux = f(xs)
      for i in range(3):
        ref_logits, ref_aux = model.apply(variables, xs[i], train=train)
        np.testing.assert_allclose(logits[i], ref_logits, rtol=1e-5,
                                   atol=1e-5)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], aux), ref_aux, rtol=1e-5,
            atol=1e-6)


class ArchitecturesTest(parameterized.TestCase):

  @parameterized.product(
      arch_kw=(
          ("convnet_bn", dict(width=4, depth=3), 3),
          ("convnet_bn", dict(width=4, depth=2, norm="instance"), 0),
          ("convnet_bn", dict(width=4, depth=2, norm="none"), 0),
          ("resnet_small", dict(width=4, depth=3), 9),
          ("resnet_small", dict(width=4, depth=4), 12),
          ("resnet18", dict(width=4), 20),
          ("mlp", dict(width=8, depth=2), 0)),
      shape=((28, 28, 1), (32, 32, 3)))
  def test_shapes(self, arch_kw, shape):
    """Shapes by abstract evaluation in both modes; values (finite) for one
    jitted train-mode forward."""
    arch, kw, num_bn = arch_kw
    model = stat_models.build(arch=arch, num_classes=7, image_shape=shape,
                              **kw)
    variables = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    # convnet_bn maps: 28 px (first_pad 3) and 32 px both give 32 -> 16 -> 8
    # (-> 4 at depth 3).
    feat_dim = {"convnet_bn": 4 * (16 if kw.get("depth") == 3 else 64),
                "resnet_small": 4 * 2**(kw.get("depth", 1) - 1),
                "resnet18": 4 * 8, "mlp": 8}[arch]
    for train in (False, True):
      logits, aux = jax.eval_shape(
          lambda v, x, t=train: model.apply(v, x, train=t), variables, x)
      chex.assert_shape(logits, (3, 7))
      chex.assert_shape(aux["features"], (3, feat_dim))
      self.assertLen(aux["moments"], num_bn)
      chex.assert_trees_all_equal_shapes_and_dtypes(
          aux["batch_stats"], variables["batch_stats"])
    if num_bn == 0:
      self.assertEqual(variables["batch_stats"], {})
    self.assertEqual(model.name, arch)
    if shape == (28, 28, 1):
      real = jax.jit(model.init)(jax.random.key(0))
      out = _jit_apply(model)(real, jax.random.normal(jax.random.key(1),
                                                      x.shape), train=True)
      chex.assert_tree_all_finite(out)

  def test_bn_moment_order_is_forward_order(self):
    """The first moment is the stem BN (C = width) and the channel counts
    follow the network; ResNet-8: stem, 2 per block, shortcuts at 2 and 3."""
    model = stat_models.build(arch="resnet_small", num_classes=3,
                              image_shape=(8, 8, 3), width=2, depth=3)
    variables = jax.eval_shape(model.init, jax.random.key(0))
    _, aux = jax.eval_shape(model.apply, variables,
                            jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32))
    self.assertEqual([m.shape[0] for m, _ in aux["moments"]],
                     [2, 2, 2, 4, 4, 4, 8, 8, 8])

  def test_parameter_counts(self):
    """ResNet-18 (CIFAR stem), 10 classes, by hand:
    conv1 3*3*3*64 = 1,728 + BN 128;
    layer1: 4 convs 3*3*64*64 = 147,456 + 4 BN 512;
    layer2: 3*3*64*128 + 3 * 3*3*128*128 + 1x1 64*128 = 73,728 + 442,368
      + 8,192, 5 BN 1,280;
    layer3: 294,912 + 1,769,472 + 32,768, 5 BN 2,560;
    layer4: 1,179,648 + 7,077,888 + 131,072, 5 BN 5,120;
    fc 512*10 + 10 = 5,130.
    Sum 11,173,962, PyTorch's CIFAR ResNet-18 (100 classes: +90*513)."""
    def count(**kw):
      model = stat_models.build(**kw)
      return stat_models.num_params(jax.eval_shape(model.init,
                                                   jax.random.key(0)))
    self.assertEqual(count(arch="resnet18", num_classes=10,
                           image_shape=(32, 32, 3)), 11_173_962)
    self.assertEqual(count(arch="resnet18", num_classes=100,
                           image_shape=(32, 32, 3)), 11_220_132)
    # DC ConvNet-3 width 128 on 32x32x3: same count as models' convnet.
    self.assertEqual(count(arch="convnet_bn", num_classes=10,
                           image_shape=(32, 32, 3)), 320_010)

  def test_strided_conv_matches_lax(self):
    for size, k, pad in ((8, 3, 1), (9, 3, 1), (7, 1, 0), (8, 1, 0)):
      x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
      w = jax.random.normal(jax.random.key(k), (k, k, 3, 5))

      def ref(x, w, pad=pad):
        return lax.conv_general_dilated(
            x, w, (2, 2), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST)

      def ours(x, w, pad=pad):
        return stat_models._conv_strided(x, w, 2, pad)

      def fwd_bwd(fn, x, w):
        y, vjp = jax.vjp(fn, x, w)
        return y, vjp(jnp.cos(y))

      y, grads = jax.jit(fwd_bwd, static_argnums=0)(ours, x, w)
      y_ref, grads_ref = jax.jit(fwd_bwd, static_argnums=0)(ref, x, w)
      np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
      chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4)

  def test_spec_defaults_and_json_roundtrip(self):
    pads = {(28, 28, 1): 3, (32, 32, 1): 1, (28, 28, 3): 1, (32, 32, 3): 1}
    for shape, pad in pads.items():
      spec = stat_models.build(arch="convnet_bn", num_classes=10,
                               image_shape=shape).spec
      self.assertEqual(spec["first_pad"], pad)
    model = stat_models.build(arch="convnet_bn", num_classes=10,
                              image_shape=[28, 28, 1], width=3, depth=2,
                              first_pad=1)
    again = stat_models.build(json.loads(json.dumps(model.spec)))
    self.assertEqual(again.spec, model.spec)
    self.assertEqual(model.spec["first_pad"], 1)
    chex.assert_trees_all_equal(again.init(jax.random.key(3)),
                                model.init(jax.random.key(3)))
    self.assertEqual(set(model.spec), set(stat_models.FIELDS))

  @parameterized.parameters(
      (dict(arch="vgg"), "arch"),
      (dict(num_classes=0), "num_classes"),
      (dict(num_classes=2.5), "num_classes"),
      (dict(image_shape=(28, 28)), "image_shape"),
      (dict(image_shape=(4, 4, 1), depth=3, first_pad=1), "image_shape"),
      (dict(width=0), "width"),
      (dict(depth=0), "depth"),
      (dict(depth=True), "depth"),
      (dict(norm="layer"), "norm"),
      (dict(first_pad=-1), "first_pad"),
      (dict(init="orthogonal"), "init"),
      (dict(init="he_fan_out"), "init"),
      (dict(widht=3), "widht"),
      (dict(arch="resnet18", depth=18), "depth"),
      (dict(arch="resnet18", norm="instance"), "norm"),
      (dict(arch="resnet_small", first_pad=3), "first_pad"),
      (dict(arch="resnet_small", depth=4, image_shape=(4, 4, 3)),
       "image_shape"),
      (dict(arch="mlp", norm="batch"), "norm"),
  )
  def test_bad_specs(self, override, field):
    spec = {"arch": "convnet_bn", "num_classes": 10,
            "image_shape": (28, 28, 1), **override}
    with self.assertRaisesRegex(ValueError, f"^{field}=") as ctx:
      stat_models.build(spec)
    self.assertNotIn("\n", str(ctx.exception))

  def test_missing_num_classes(self):
    with self.assertRaisesRegex(ValueError, "^num_classes="):
      stat_models.build(arch="mlp", image_shape=(8, 8, 1))
    with self.assertRaisesRegex(ValueError, "^num_classes="):
      stat_models.build(arch="mlp", image_shape=(8, 8, 1), num_classes=None)

  def test_train_mode_needs_two_values_per_channel(self):
    """As PyTorch: a single value per channel cannot be batch-normalised."""
    bn = batchnorm.BatchNorm()
    variables = bn.init(jax.random.key(0), jnp.ones((2, 1, 1, 3)), False)
    with self.assertRaisesRegex(ValueError, "more than one value"):
      bn.apply(variables, jnp.ones((1, 1, 1, 3)), True,
               mutable=["batch_stats"])


class GradientAndCompileTest(absltest.TestCase):

  def test_input_gradient_matches_float64_central_differences(self):
    """SRe2L recover loss (CE + BN-moment L2 distances) in eval mode."""

    def loss_fn(model, variables, x, y):
      logits, aux = model.apply(variables, x, train=False)
      ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         y[:, None], axis=1))
      stats = [variables["batch_stats"][f"BatchNorm_{i}"] for i in range(2)]
      bn = sum(jnp.linalg.norm(m - s["mean"]) + jnp.linalg.norm(v - s["var"])
               for (m, v), s in zip(aux["moments"], stats))
      return ce + bn

    model, variables = _tiny_convnet(shape=(8, 8, 1))
    x32 = jax.random.normal(jax.random.key(7), (4, 8, 8, 1))
    y = jnp.array([0, 1, 2, 3])
    g32 = jax.jit(jax.grad(lambda x: loss_fn(model, variables, x, y)))(x32)
    with jax.enable_x64(True):
      v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
      x = jnp.asarray(x32, jnp.float64)
      f = jax.jit(lambda x: loss_fn(model, v64, x, y))
      g = jax.jit(jax.grad(lambda x: loss_fn(model, v64, x, y)))(x)
      self.assertEqual(g.dtype, jnp.float64)
      chex.assert_tree_all_finite(g)
      gnorm = float(jnp.linalg.norm(g))
      self.assertGreater(gnorm, 1e-3)
      for seed in range(2):
        d = jax.random.normal(jax.random.key(10 + seed), x.shape,
                              jnp.float64)
        d = d / jnp.linalg.norm(d)
        h = 1e-5
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
        self.assertLess(abs(float(fd - jnp.vdot(g, d))), 1e-6 * gnorm)
      g64 = np.asarray(g)
    self.assertLess(np.linalg.norm(np.asarray(g32) - g64),
                    1e-3 * np.linalg.norm(g64))

  def test_jitted_apply_compiles_once(self):
    model, variables = _tiny_convnet()
    for train in (False, True):
      chex.clear_trace_counter()

      @jax.jit
      @chex.assert_max_traces(n=1)
      def f(variables, x, train=train):
        return model.apply(variables, x, train=train)

      for seed in range(2):
        x = jax.random.normal(jax.random.key(seed), (4, 9, 9, 2))
        jax.block_until_ready(f(variables, x))
      new_stats = f(variables, x)[1]["batch_stats"]
      jax.block_until_ready(f({**variables, "batch_stats": new_stats}, x))


if __name__ == "__main__":
  absltest.main()
