"""DD's Table 3 (AlexNet -> VOC / CUB): the network, its weights, the
experiment.

AlexNet: forward shapes, torchvision's parameter count (eval_shape, no
allocation), the adaptive average pool against PyTorch's bin rule; the
torchvision converter on a fake numpy state dict against an NCHW reference
forward pass; weight files (round trip, foreign, corrupt, wrong shapes)
and the ImageNet check set; VOC's largest-object label; the adaptation
meta-gradient (fixed pretrained init, 1 step x 3 epochs) against float64
finite differences of a Python-loop reference; the smoke preset from the
CLI and from Python.
"""

import dataclasses
import json
import os

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.core import meta
from distill_jax.data import voc_cub
from distill_jax.methods import adapt
from distill_jax.methods import dd
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import alexnet
from experiments import adapt_alexnet
from experiments import convert_torchvision_alexnet as convert_lib
from experiments import presets
from tests import experiments_test
from tests import gradcheck

_run = experiments_test._run  # pylint: disable=protected-access
SIZE = 64  # the smallest convenient AlexNet input (>= 63).
WIDTH = 4


def _torch_state_dict(width: int, num_classes: int, seed: int = 0) -> dict:
  """Random arrays in torchvision's layout (OIHW, (out, in))."""
  rng = np.random.default_rng(seed)
  convs, hidden = alexnet.widths(width)
  shapes = {"conv1": (convs[0], 3, 11, 11), "conv2": (convs[1], convs[0], 5, 5),
            "conv3": (convs[2], convs[1], 3, 3),
            "conv4": (convs[3], convs[2], 3, 3),
            "conv5": (convs[4], convs[3], 3, 3),
            "fc6": (hidden, convs[4] * 36), "fc7": (hidden, hidden),
            "fc8": (num_classes, hidden)}
  out = {}
  for name, shape in shapes.items():
    fan_in = int(np.prod(shape[1:]))
    prefix = alexnet.TORCH_NAMES[name]
    out[prefix + ".weight"] = rng.normal(0, 1 / np.sqrt(fan_in), shape)
    out[prefix + ".bias"] = rng.normal(0, 0.1, shape[:1])
  out["features.0.extra_buffer"] = np.zeros(3)  # ignored.
  return {k: v.astype(np.float32) for k, v in out.items()}


def _reference_nchw(sd: dict, x_nhwc: np.ndarray) -> np.ndarray:
  """torchvision's AlexNet forward in NCHW with OIHW kernels (eval mode)."""
  hp = jax.lax.Precision.HIGHEST
  x = jnp.asarray(x_nhwc).transpose(0, 3, 1, 2)

  def conv(x, name, stride, pad):
    w, b = sd[name + ".weight"], sd[name + ".bias"]
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                     dimension_numbers=("NCHW", "OIHW",
                                                        "NCHW"), precision=hp)
    return jax.nn.relu(y + b[None, :, None, None])

  def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3),
                                 (1, 1, 2, 2), "VALID")

  x = pool(conv(x, "features.0", 4, 2))
  x = pool(conv(x, "features.3", 1, 2))
  x = conv(conv(conv(x, "features.6", 1, 1), "features.8", 1, 1),
           "features.10", 1, 1)
  x = pool(x)
  h = x.shape[2]  # adaptive average pool, PyTorch's bins, as a loop.
  rows = []
  for i in range(6):
    cols = []
    for j in range(6):
      r0, r1 = (i * h) // 6, -(-((i + 1) * h) // 6)
      c0, c1 = (j * h) // 6, -(-((j + 1) * h) // 6)
      cols.append(x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)))
    rows.append(jnp.stack(cols, -1))
  x = jnp.stack(rows, -2).reshape(x.shape[0], -1)  # (N, C*6*6), NCHW order.
  for name, relu in (("classifier.1", True), ("classifier.4", True),
                     ("classifier.6", False)):
    x = (jnp.dot(x, sd[name + ".weight"].T, precision=hp) +
         sd[name + ".bias"][None, :])
    x = jax.nn.relu(x) if relu else x
  return np.asarray(x)


def test_forward_shapes_and_torchvision_parameter_count():
  full = alexnet.shapes(alexnet.IMAGENET_CLASSES)  # eval_shape only.
  assert alexnet.TORCHVISION_PARAMS == 61_100_840
  assert sum(int(np.prod(s)) for d in full.values()
             for s in d.values()) == 61_100_840
  assert full["fc6"]["kernel"] == (256 * 36, 4096)
  assert full["conv1"]["kernel"] == (11, 11, 3, 64)
  model = alexnet.build(5, (SIZE, SIZE, 3), WIDTH)
  init_shapes = jax.eval_shape(model.init, jax.random.key(0))
  assert jax.tree.map(lambda s: s.shape, init_shapes) == alexnet.shapes(
      5, WIDTH, SIZE)
  # Parameters from the converter (no init to compile; tested below).
  params = alexnet.from_torchvision(_torch_state_dict(WIDTH, 5))
  logits = model.apply(params, jnp.ones((2, SIZE, SIZE, 3)))
  chex.assert_shape(logits, (2, 5))
  chex.assert_tree_all_finite(logits)
  with pytest.raises(ValueError, match="at least 63"):
    alexnet.build(5, (32, 32, 3), WIDTH)


def test_adaptive_pool_bins():
  x = jax.random.normal(jax.random.key(1), (2, 13, 12, 3))
  out = alexnet.adaptive_avg_pool(x)
  chex.assert_shape(out, (2, 6, 6, 3))
  # 12 -> 6: 2-wide bins; 13 -> 6: bin 0 is rows [0, 3), bin 5 [10, 13).
  np.testing.assert_allclose(out[:, 0, 1], x[:, 0:3, 2:4].mean((1, 2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 5, 5], x[:, 10:13, 10:12].mean((1, 2)),
                             rtol=1e-5, atol=1e-6)
  one = alexnet.adaptive_avg_pool(x[:, :1, :1])  # 1x1 -> replicated.
  np.testing.assert_allclose(one, jnp.broadcast_to(x[:, :1, :1], one.shape))


def test_converter_matches_nchw_reference():
  size = 100  # the last pool gives 2x2: the 6x6 adaptive pool is not a copy.
  sd = _torch_state_dict(WIDTH, 3)
  params = alexnet.from_torchvision(sd)
  model = alexnet.build(3, (size, size, 3), WIDTH)
  params = alexnet.check_params(params, alexnet.shapes(3, WIDTH, size),
                                "converted")
  x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(
      np.float32)
  ref = _reference_nchw({k: jnp.asarray(v) for k, v in sd.items()}, x)
  with jax.default_matmul_precision("highest"):
    ours = np.asarray(model.apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
  assert np.abs(ref).max() > 1e-3  # the comparison is not of zeros.
  # Without the flatten-order fix fc6 reads the wrong features.
  bad = dict(sd)
  bad["classifier.1.weight"] = sd["classifier.1.weight"].reshape(
      -1, WIDTH, 6, 6).transpose(0, 2, 3, 1).reshape(len(
          sd["classifier.1.weight"]), -1)
  wrong = np.asarray(model.apply(alexnet.from_torchvision(bad), jnp.asarray(x)))
  assert not np.allclose(wrong, ref, rtol=1e-4, atol=1e-4)


def test_converter_script_and_foreign_state_dict(tmp_path):
  sd = _torch_state_dict(WIDTH, alexnet.IMAGENET_CLASSES)
  out = str(tmp_path / "alexnet.npz")
  convert_lib.convert(sd, out, width=WIDTH)
  loaded = alexnet.load_params(out, alexnet.shapes(alexnet.IMAGENET_CLASSES,
                                                   WIDTH))
  np.testing.assert_array_equal(loaded["conv1"]["kernel"],
                                sd["features.0.weight"].transpose(2, 3, 1, 0))
  with pytest.raises(ValueError, match="missing features.0.weight"):
    alexnet.from_torchvision({"fc.weight": np.zeros((2, 2))})
  with pytest.raises(ValueError, match="wrong shape"):  # not torchvision's.
    convert_lib.convert(sd, out)
  with pytest.raises(ValueError, match="no such state dict"):
    convert_lib.read_state_dict(str(tmp_path / "none.pth"))


def test_weight_files_round_trip_and_errors(tmp_path):
  expected = alexnet.shapes(5, WIDTH, SIZE)
  params = alexnet.from_torchvision(_torch_state_dict(WIDTH, 5, seed=3))
  npz, pack = str(tmp_path / "w.npz"), str(tmp_path / "w.msgpack")
  alexnet.save_params(npz, params)
  with open(pack, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(
        {"params": jax.tree.map(np.asarray, params)}))
  for path in (npz, pack):
    chex.assert_trees_all_equal(alexnet.load_params(path, expected), params)
  foreign = str(tmp_path / "foreign.npz")
  np.savez(foreign, **{"dense/kernel": np.zeros((3, 3))})
  corrupt = str(tmp_path / "corrupt.npz")
  with open(corrupt, "wb") as f:
    f.write(b"PK\x03\x04 not really a zip")
  cases = [(foreign, "missing conv1/bias"), (corrupt, "not a readable .npz"),
           (str(tmp_path / "none.npz"), "no such weight file"),
           (npz, "wrong shape")]
  for path, message in cases:
    want = expected if message != "wrong shape" else alexnet.shapes(5, 8, SIZE)
    with pytest.raises(ValueError, match=message) as e:
      alexnet.load_params(path, want)
    assert "\n" not in str(e.value)


def test_check_set_gates_the_weights(tmp_path):
  weights = str(tmp_path / "w.npz")
  alexnet.save_params(weights, alexnet.from_torchvision(
      _torch_state_dict(WIDTH, 1000, seed=4)))
  check = str(tmp_path / "check.npz")
  rng = np.random.default_rng(0)
  np.savez(check, x=rng.integers(0, 255, (6, 70, 80, 3), dtype=np.uint8),
           y=np.arange(6))
  cfg = dataclasses.replace(presets.ADAPT_ALEXNET("smoke"), weights=weights,
                            check_set=check)
  _, info = adapt.pretrained(cfg, jax.random.key(0))
  assert 0.0 <= info["check_top1"] <= 100.0
  assert info["stated_imagenet_top1"] == alexnet.TORCHVISION_TOP1
  strict = dataclasses.replace(cfg, check_min_acc=100.0)
  with pytest.raises(ValueError, match="below --check_min_acc=100.0"):
    adapt.pretrained(strict, jax.random.key(0))
  np.savez(check, x=np.zeros((2, 8, 8), np.uint8), y=np.zeros(2))
  with pytest.raises(ValueError, match="must be"):
    adapt.pretrained(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="needs --weights"):
    dataclasses.replace(cfg, weights="").validate()


def test_voc_label_is_the_largest_object():
  objects = {"label": np.array([3, 7, 1]),
             "bbox": np.array([[0, 0, .2, .2], [.1, .1, .9, .8],
                               [0, 0, .5, .5]])}
  assert voc_cub.largest_object(objects) == 7
  assert voc_cub.largest_object({"label": np.zeros(0), "bbox": np.zeros(
      (0, 4))}) == -1
  x, y = voc_cub.to_arrays(
      [{"image": np.zeros((30, 50, 1), np.uint8), "objects": objects},
       {"image": np.zeros((5, 5, 3), np.uint8),
        "objects": {"label": np.zeros(0), "bbox": np.zeros((0, 4))}}],
      "voc", 16)
  assert x.shape == (1, 16, 16, 3) and y.tolist() == [7]
  ds = voc_cub.load("fake", image_size=SIZE, val_size=8, seed=0)
  assert ds.mean == voc_cub.IMAGENET_MEAN and ds.num_classes == 4
  assert set(ds.y_val.tolist()) == {0, 1, 2, 3}


def test_adaptation_meta_gradient_finite_differences(tmp_path):
  """The core's meta-gradient (`meta.value_and_grad`, the function
  `dd.grad_fn` calls in every DD outer step) of the Table 3 problem
  (`adapt.distill_config` -> `dd.problem`: plain GD, 1 step x 3 epochs,
  fixed pretrained AlexNet) against a Python loop of the three GD steps."""
  cfg = dataclasses.replace(presets.ADAPT_ALEXNET("smoke"), width=2)
  dcfg = adapt.distill_config(cfg, str(tmp_path / "pool.npz"))
  assert (dcfg.steps, dcfg.epochs, dcfg.init_mode) == (1, 3,
                                                       "fixed_pretrained")
  with jax.enable_x64(True):
    model = alexnet.build(3, (SIZE, SIZE, 3), 2)
    params0 = gradcheck.to_f64(jax.tree.map(
        jnp.asarray, alexnet.from_torchvision(_torch_state_dict(2, 3, 5))))
    prob = dd.problem(dcfg, model.apply)
    learned, labels = distilled.init(
        jax.random.key(6), steps=1, epochs=3, num_classes=3, per_class=1,
        image_shape=(SIZE, SIZE, 3), lr_init=0.05)
    learned = gradcheck.to_f64(learned)
    rx = jax.random.normal(jax.random.key(7), (4, SIZE, SIZE, 3), jnp.float64)
    ry = jnp.array([0, 1, 2, 1])
    key = jax.random.key(8)
    vg = jax.jit(lambda l: meta.value_and_grad(
        l, labels, jax.tree.map(lambda a: a[None], params0), key[None], None,
        rx, ry, problem=prob))
    loss, grad = vg(learned)

    def ce(p, x, y):
      logp = jax.nn.log_softmax(model.apply(p, x))
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))

    def reference(l):
      p = params0
      for t in range(3):  # step t mod S of epoch t, lr softplus(raw_lr[t]).
        g = jax.grad(ce)(p, l["x"][0], labels[0])
        lr = jax.nn.softplus(l["raw_lr"][t])
        p = jax.tree.map(lambda a, b, lr=lr: a - lr * b, p, g)
      return ce(p, rx, ry)
    ref = float(jax.jit(reference)(learned))
    assert abs(ref - float(loss)) < 1e-10 * max(1.0, abs(ref))
    chex.assert_trees_all_equal_shapes(grad, learned)
    gradcheck.check_with_mutations(reference, learned, grad,
                                   key=jax.random.key(9), num_dirs=2)


def _check_results(workdir):
  out = json.loads((workdir / "results.json").read_text())
  assert set(adapt_alexnet.ROW_NAMES) <= set(out["rows"])
  for row in out["rows"].values():
    assert 0.0 <= row["test_acc"]["mean"] <= 100.0
  assert out["rows"]["random_real"]["test_acc"]["n"] == 2
  assert len(out["rows"]["dd"]["learned_lrs"]) == 3
  assert out["pretrained"]["weights"] == "random initialisation"
  assert "fine-tune on full target" in (workdir / "table3.md").read_text()
  assert os.path.exists(workdir / "dd" / "distilled.npz")
  return out


def test_smoke_cli(tmp_path):
  _run("adapt_alexnet", ["--preset=smoke"], "", tmp_path)
  out = _check_results(tmp_path / "wd")
  assert out["config"]["target"] == "fake"


def test_smoke_python(tmp_path):
  cfg = adapt_alexnet.preset("smoke")
  out = adapt_alexnet.run(cfg, str(tmp_path), show_progress=False)
  assert out == json.loads((tmp_path / "results.json").read_text())
  _check_results(tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--weights=/nonexistent/alexnet.npz"], "no such weight file"),
    (["--image_size=32"], "must be >= 63"),
    (["--target=imagenet"], "--target"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
  proc = _run("adapt_alexnet", ["--preset=smoke", *args], "", tmp_path,
              check=False)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], proc.stderr


@pytest.mark.parametrize("target,classes", [("voc", 20),
                                            ("caltech_birds2011", 200)])
def test_tfds_targets_on_mock_data(tmp_path, target, classes):
  """The TFDS path (mocked by `tfds.testing.mock_data`: nothing downloads)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=12):
    ds = voc_cub.load(target, image_size=SIZE, val_size=2, seed=0,
                      data_dir=str(tmp_path))
  assert ds.num_classes == classes and ds.image_shape == (SIZE, SIZE, 3)
  assert len(ds.y_val) == 2 and len(ds.y_test) == 12
  assert ds.source.startswith("tfds:")
  chex.assert_tree_all_finite((ds.x_train, ds.x_test))
  assert ds.y_train.max() < classes
