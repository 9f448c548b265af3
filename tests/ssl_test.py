"""SC-DD's self-supervised teacher: NT-Xent against a hand computation and
finite differences, the linear probe leaves the backbone and its BN
statistics untouched, the SSL cache, SC-DD's recover settings, bad flags,
and `--method=scdd --preset=smoke` end to end."""

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.methods.decoupled import config as config_lib
from distill_jax.methods.decoupled import ssl
from distill_jax.methods.decoupled import ssl_aug
from distill_jax.nn import stat_models
from experiments import common
from experiments import presets
from tests import common_test
from tests import gradcheck
from tests import test_utils
from tests.experiments_test import _run
from tests.experiments_test import fake_data  # pylint: disable=unused-import

TINY = ssl.SSLConfig(epochs=2, batch_size=16, proj_hidden=8, proj_dim=4,
                     train_limit=0, probe_epochs=20, probe_lr=0.05,
                     probe_batch_size=16)


def _spec(ds):
  return stat_models.spec_for("convnet_bn", width=4, depth=2,
                              num_classes=ds.num_classes,
                              image_shape=ds.image_shape)


def _nt_xent_loops(z, tau):
  """NT-Xent written out with Python loops (SimCLR, eq. 1)."""
  n2 = len(z)
  u = [[a / math.sqrt(sum(b * b for b in v)) for a in v] for v in z]
  total = 0.0
  for i in range(n2):
    j = (i + n2 // 2) % n2
    sims = {k: sum(a * b for a, b in zip(u[i], u[k])) / tau
            for k in range(n2) if k != i}
    denom = sum(math.exp(s) for s in sims.values())
    total += -math.log(math.exp(sims[j]) / denom)
  return total / n2


def test_nt_xent_matches_loops():
  z = np.random.default_rng(0).normal(size=(6, 3))
  for tau in (0.5, 0.1):
    got = float(ssl.nt_xent(jnp.asarray(z, jnp.float32), tau))
    np.testing.assert_allclose(got, _nt_xent_loops(z.tolist(), tau),
                               rtol=1e-5)
  # Identical views and orthogonal others: the positive dominates.
  eye = np.concatenate([np.eye(3), np.eye(3)])
  assert float(ssl.nt_xent(jnp.asarray(eye), 0.1)) < 1e-3


def test_nt_xent_gradient_finite_differences():
  with jax.enable_x64(True):
    z = jnp.asarray(np.random.default_rng(1).normal(size=(8, 5)))
    f = lambda v: ssl.nt_xent(v, 0.5)
    gradcheck.assert_float64(f, z)
    gradcheck.check_with_mutations(f, z, jax.grad(f)(z),
                                   key=jax.random.key(0))


@pytest.fixture(scope="module")
def blobs():
  return test_utils.tiny_dataset(n_train=64, n_val=16, n_test=32,
                                 shape=(8, 8, 1), classes=4)


@pytest.fixture(scope="module")
def pretrained(blobs):
  model, variables = ssl.train(TINY, _spec(blobs), blobs.x_train)
  return model, variables


def test_simclr_trains_the_backbone(blobs, pretrained):
  model, variables = pretrained
  init = model.init(jax.random.split(jax.random.key(0), 3)[0])
  chex.assert_tree_all_finite(variables)
  # Train-mode BN on the views moved the running statistics.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       variables["batch_stats"], init["batch_stats"])
  assert max(jax.tree.leaves(moved)) > 1e-3
  chex.assert_trees_all_equal_structs(variables, init)


def test_probe_freezes_backbone_and_bn(blobs, pretrained):
  model, variables = pretrained
  probed = ssl.probe(TINY, model, variables, blobs.x_train, blobs.y_train)
  head = ssl.head_name(variables["params"])
  chex.assert_trees_all_equal(probed["batch_stats"],
                              variables["batch_stats"])
  for name, p in variables["params"].items():
    if name != head:
      chex.assert_trees_all_equal(probed["params"][name], p)
  assert float(jnp.max(jnp.abs(probed["params"][head]["kernel"]))) > 0
  # The probe is the classifier the teacher's logits use: features of the
  # eval-mode backbone times the probe.
  x = jnp.asarray(blobs.x_test)
  logits, aux = model.apply(probed, x, train=False)
  w = probed["params"][head]
  np.testing.assert_allclose(logits, aux["features"] @ w["kernel"] +
                             w["bias"][None, :], rtol=1e-5, atol=1e-5)
  # The classes are learnable from the frozen features (chance: 25 %).
  acc = np.mean(np.argmax(np.asarray(logits), -1) == blobs.y_test)
  assert acc > 0.5, acc


def test_ssl_cache_hit_reuses_the_model(blobs, pretrained, tmp_path,
                                        monkeypatch):
  calls = []

  def pretrained_train(*a):  # the fixture's SimCLR run, counted.
    calls.append(a)
    return pretrained
  monkeypatch.setattr(ssl, "train", pretrained_train)
  logs = []
  first = ssl.load_or_train(TINY, _spec(blobs), blobs, str(tmp_path),
                            log=logs.append)
  assert 0.0 <= first.meta["test_acc"] <= 1.0
  assert first.meta["kind"] == "ssl_teacher"

  again = ssl.load_or_train(TINY, _spec(blobs), blobs, str(tmp_path),
                            log=logs.append)
  assert "reusing" in logs[-1] and len(calls) == 1
  chex.assert_trees_all_close(again.variables, first.variables)
  assert again.meta["test_acc"] == first.meta["test_acc"]
  x = jnp.asarray(blobs.x_test[:4])
  np.testing.assert_allclose(again.logits(x), first.logits(x), rtol=1e-6)
  # A corrupt cache file is a one-line error naming the fix.
  (path,) = tmp_path.glob("ssl_*.npz")
  path.write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="delete the file"):
    ssl.load_or_train(TINY, _spec(blobs), blobs, str(tmp_path))


def test_scdd_recover_settings_unless_given():
  base = presets.DECOUPLED("fashion_ipc10")
  cfg = base.replace_flat(method="scdd", recover_lr=0.2)
  r = cfg.recover_cfg()
  assert (r.method, r.lr, r.r_bn, r.jitter, r.crop, r.flip) == (
      "sre2l", 0.2, 0.005, 4, False, False)
  # Later changes of an SC-DD config keep the user's settings.
  cfg2 = cfg.replace_flat(method="scdd", recover_jitter=1, ssl_epochs=3.0)
  assert (cfg2.recover.lr, cfg2.recover.jitter, cfg2.ssl.epochs) == (
      0.2, 1, 3.0)
  assert base.replace_flat(method="sre2l").recover == base.recover
  # config.json round trip with the ssl stage.
  back = config_lib.DecoupledConfig.from_dict(
      json.loads(cfg2.to_json()))
  assert back == cfg2
  gpu = presets.DECOUPLED("gpu_scdd_cifar100_ipc50")
  assert (gpu.method, gpu.dataset, gpu.ipc, gpu.recover.lr,
          gpu.post.arch) == ("scdd", "cifar100", 50, 0.4, "resnet18")


def test_scdd_flags_over_the_preset():
  fv, table = common_test._flags("decoupled", "--preset=cifar10_ipc10",
                                 "--method=scdd", "--recover_jitter=2",
                                 "--ssl_epochs=3")
  cfg = common.config_from_flags(table, config_lib.DecoupledConfig, fv)
  assert cfg == presets.DECOUPLED("cifar10_ipc10").replace_flat(
      method="scdd", recover_jitter=2, ssl_epochs=3.0)
  assert (cfg.recover.jitter, cfg.recover.lr, cfg.recover.flip,
          cfg.ssl.epochs, cfg.ssl.flip) == (2, 0.4, False, 3.0, True)
  fv, table = common_test._flags("decoupled", "--preset=smoke",
                                 "--method=scdd", "--ssl_temperature=-1")
  code, err = common_test._stderr_of(lambda: common.config_from_flags(
      table, config_lib.DecoupledConfig, fv))
  assert code == 2 and err.count("\n") == 1, err
  assert err.startswith("error: ssl_temperature=-1.0 must be > 0"), err


@pytest.mark.parametrize("flag,value,message", [
    ("ssl_temperature", 0.0, "ssl_temperature=0.0 must be > 0"),
    ("ssl_batch_size", 1, "ssl_batch_size=1 must be >= 2"),
    ("ssl_min_scale", 1.5, "ssl_min_scale=1.5 must be in (0, 1]"),
    ("ssl_optimizer", "lars", "ssl_optimizer='lars'; choose one of"),
])
def test_bad_ssl_values(flag, value, message):
  with pytest.raises(ValueError) as e:
    presets.DECOUPLED("smoke").replace_flat(method="scdd", **{flag: value})
  assert message in str(e.value) and "\n" not in str(e.value)


def test_scdd_needs_a_bn_backbone(blobs):
  with pytest.raises(ValueError, match="teacher_norm=instance"):
    presets.DECOUPLED("smoke").replace_flat(method="scdd",
                                            teacher_norm="instance")
  spec = dataclasses.replace(
      config_lib.DecoupledConfig().teacher, arch="mlp").model_spec(blobs)
  with pytest.raises(ValueError, match="BatchNorm teacher"):
    ssl.load_or_train(TINY, spec, blobs, "/nonexistent")


def test_scdd_cli_smoke(fake_data, tmp_path):
  cache = tmp_path / "cache"
  _run("decoupled", ["--preset=smoke", "--method=scdd",
                     f"--teacher_cache={cache}", "--recover_lr=0.3",
                     "--noeval_random", "--noeval_hard", "--noeval_metrics",
                     "--post_students=1"],
       fake_data, tmp_path)
  wd = tmp_path / "wd"
  report = json.loads((wd / "report.json").read_text())
  assert report["method"] == "scdd"
  assert report["ssl_teacher"]["kind"] == "ssl_teacher"
  assert 0.0 <= report["ssl_probe_test_acc"] <= 1.0
  # Relabel/post-train teacher: the supervised one (C.8 item 8).
  assert report["teacher_test_acc"] > 0.5
  assert 0.0 <= report["test_acc"]["mean"] <= 100.0
  cfg = json.loads((wd / "config.json").read_text())
  assert cfg["recover"]["lr"] == 0.3 and cfg["recover"]["r_bn"] == 0.005
  rows = [json.loads(l) for l in (wd / "recover" /
                                  "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 8 and np.isfinite(rows[-1]["loss"])
  assert len(list(cache.glob("ssl_*.npz"))) == 1
  assert len(list(cache.glob("teacher_*.npz"))) == 1


def test_simclr_loss_gradient_finite_differences(blobs):
  # The training gradient: NT-Xent of the projections of two views through
  # the train-mode backbone and the projection head, w.r.t. every parameter.
  with jax.enable_x64(True):
    model = ssl.contrastive_model(stat_models.build(_spec(blobs)), TINY)
    v = gradcheck.to_f64(model.init(jax.random.key(0)))
    x = jnp.asarray(blobs.x_train[:4], jnp.float64)
    views = ssl_aug.two_views(0.5, True, 0.4)(jax.random.key(1), 0, None,
                                              x)
    # The projection head's first kernel and the first conv kernel (conv
    # biases before a train-mode BN and the unused classifier have zero
    # gradient).
    def f(sub):
      bb, hd = v["params"]["backbone"], v["params"]["head"]
      params = {"head": {**hd, "Dense_0": {**hd["Dense_0"],
                                           "kernel": sub["proj"]}},
                "backbone": {**bb, "Conv_0": {**bb["Conv_0"],
                                              "kernel": sub["conv"]}}}
      z, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]},
                         views, train=True)
      return ssl.nt_xent(z, 0.5)
    f = jax.jit(f)
    sub = {"proj": v["params"]["head"]["Dense_0"]["kernel"],
           "conv": v["params"]["backbone"]["Conv_0"]["kernel"]}
    gradcheck.assert_float64(f, sub)
    gradcheck.check_with_mutations(f, sub, jax.grad(f)(sub),
                                   key=jax.random.key(2), num_dirs=2)


def test_scdd_gpu_presets_at_tiny_size(tmp_path):
  """SC-DD's Tiny-ImageNet and ImageNet-1K presets: their settings, and the
  ImageNet-1K one (cross-class batches of some classes, RRC, AdamW
  students) run end to end with tiny networks."""
  from distill_jax.run import train_decoupled  # pylint: disable=g-import-not-at-top
  tiny = presets.DECOUPLED("gpu_scdd_tiny_ipc50")
  assert (tiny.method, tiny.image_size, tiny.recover.lr, tiny.post.epochs,
          tiny.post.optimizer, tiny.post.lr) == ("scdd", 64, 0.6, 500, "sgd",
                                                  0.2)
  cfg = presets.DECOUPLED("gpu_scdd_imagenet1k_ipc10")
  rc = cfg.recover_cfg()
  assert (cfg.image_size, rc.lr, rc.r_bn, rc.batch_mode, rc.batch_size,
          rc.crop, cfg.ssl.lr, cfg.post.temperature, cfg.post.mix) == (
              224, 0.25, 0.01, "cross_class", 50, True, 0.03, 20.0, "cutmix")
  ds = test_utils.tiny_dataset(n_train=48, n_val=8, n_test=8,
                               shape=(8, 8, 3), classes=4)
  cfg = cfg.replace_flat(
      ipc=2, val_size=8, teacher_arch="convnet_bn", teacher_width=4,
      teacher_depth=1, teacher_epochs=1, teacher_batch_size=16,
      ssl_epochs=1, ssl_batch_size=16, ssl_proj_hidden=4, ssl_proj_dim=4,
      ssl_probe_epochs=1, recover_iterations=2, recover_batch_size=2,
      recover_jitter=1, post_arch="convnet_bn", post_width=4, post_depth=1,
      post_epochs=1, post_batch_size=4, post_students=1, eval_hard=False,
      eval_random=False, eval_metrics=False,
      teacher_cache=str(tmp_path / "teachers"))
  rep = train_decoupled.run(cfg, str(tmp_path / "wd"), dataset=ds,
                            show_progress=False)
  assert rep["iterations"] == 2 and rep["image_iterations"] == 2 * 8
  assert rep["evaluation"]["protocol"]["optimizer"] == "adamw"
  assert 0.0 <= rep["test_acc"]["mean"] <= 100.0
