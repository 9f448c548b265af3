"""G-VBSM: its loss terms against hand computations and loops, the pool
round-robin, ensemble relabel, MSE + CE post-train, presets and a CLI run."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill_jax.core import outer
from distill_jax.methods.decoupled import gvbsm
from distill_jax.methods.decoupled import gvbsm_terms
from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import recover
from distill_jax.methods.decoupled import relabel
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.nn import stat_models
from distill_jax.run import train_decoupled
from experiments import presets
from tests import test_utils
from tests.experiments_test import _run
from tests.experiments_test import assert_one_line_error
from tests.experiments_test import fake_data  # pylint: disable=unused-import

SHAPE = (8, 8, 1)


def _teacher(arch, seed=0, shape=SHAPE, classes=3, **kw):
  spec = stat_models.spec_for(arch, width=4, depth=2, num_classes=classes,
                              image_shape=shape)
  spec.update(kw)
  model = stat_models.build(spec)
  return teacher_lib.Teacher(model, model.init(jax.random.key(seed)),
                             {"recipe": {"arch": arch, "width": 4},
                              "test_acc": 0.0})


# ------------------------------------------------------------- Gram term.


def _gram(x, group):
  return gvbsm_terms.GramSpectrum(group_size=group)(
      None, {"inputs": x}, None, None)


@pytest.mark.parametrize("case", ["identical", "b50", "b50_identical"])
def test_gram_term_finite_values_and_gradients(case):
  n = 4 if case == "identical" else 50
  base = jax.random.normal(jax.random.key(1), (n, 28, 28, 1))
  x = base if case == "b50" else jnp.broadcast_to(base[:1], base.shape)
  x = jnp.concatenate([x, x + 0.1])  # two classes of n images.
  value, grad = jax.value_and_grad(lambda v: _gram(v, n))(x)
  chex.assert_tree_all_finite((value, grad))
  assert value >= 0.0
  # The naive t log t of the target is NaN here (softmax underflows).
  lam = jnp.linalg.eigvalsh(x[:n].reshape(n, -1) @ x[:n].reshape(n, -1).T)
  p = jax.nn.softmax(lam / 4.0)
  if case != "identical":
    assert bool(jnp.any(p == 0.0))


def test_gram_term_matches_hand_computation_and_finite_differences():
  x = jax.random.normal(jax.random.key(2), (6, 4, 4, 1))
  want = 0.0
  for g in np.asarray(x).reshape(2, 3, -1).astype(np.float64):
    lam = np.linalg.eigvalsh(g @ g.T)
    p = np.exp(lam / 4 - np.max(lam / 4))
    p /= p.sum()
    logq = lam - np.max(lam) - np.log(np.sum(np.exp(lam - np.max(lam))))
    want += np.sum(p * (np.log(p) - logq))
  np.testing.assert_allclose(_gram(x, 3), want, rtol=1e-4)
  # Gradient (the target is held fixed) against central differences.
  fixed = [jax.lax.stop_gradient(jax.nn.softmax(
      jnp.linalg.eigvalsh(g @ g.T) / 4.0)) for g in x.reshape(2, 3, -1)]

  def fixed_target(v):
    out = 0.0
    for g, p in zip(v.reshape(2, 3, -1), fixed):
      out += -jnp.sum(p * jax.nn.log_softmax(jnp.linalg.eigvalsh(g @ g.T)))
    return out
  grad = jax.grad(lambda v: _gram(v, 3))(x)
  d = jax.random.normal(jax.random.key(3), x.shape)
  eps = 1e-2
  fd = (fixed_target(x + eps * d) - fixed_target(x - eps * d)) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(grad * d), fd, rtol=2e-2, atol=1e-4)


def test_gram_inputs_pool_to_32():
  x = jnp.arange(2 * 64 * 64 * 3, dtype=jnp.float32).reshape(2, 64, 64, 3)
  got = gvbsm_terms.gram_inputs(x)
  want = x.reshape(2, 32, 2, 32, 2, 3).mean((2, 4)).reshape(2, -1)
  chex.assert_trees_all_close(got, want)
  chex.assert_shape(gvbsm_terms.gram_inputs(x[:, :28, :28]), (2, 28 * 28 * 3))


# ----------------------------------------------------- EMA, statistics.


def test_ema_straight_through_value_and_gradient_by_hand():
  alpha, prev = 0.8, jnp.asarray([1.0, -2.0, 0.5])
  x = jax.random.normal(jax.random.key(0), (5, 3))
  w = jnp.asarray([0.3, -1.0, 2.0])

  def loss(v):
    values, _ = gvbsm_terms.straight_through(prev, jnp.mean(v, 0), alpha)
    return jnp.sum(w * values)
  values, new = gvbsm_terms.straight_through(prev, jnp.mean(x, 0), alpha)
  ema = alpha * prev + (1 - alpha) * jnp.mean(x, 0)
  chex.assert_trees_all_close(values, ema, rtol=1e-6)
  chex.assert_trees_all_close(new, ema, rtol=1e-6)
  # Gradient: the current batch's (d mean / dx = 1 / N), not (1 - alpha)x.
  chex.assert_trees_all_close(jax.grad(loss)(x),
                              jnp.broadcast_to(w / 5.0, x.shape), rtol=1e-6)
  # The BN term through `prepare`: || running - EMA ||, 10x not on a BN.
  aux = {"moments": ((jnp.mean(x, 0), jnp.var(x, 0)),),
         "conv_inputs": (x,)}
  state = gvbsm_terms.init_state(((prev, prev + 3),),
                                 (gvbsm_terms.hook_stats(x),))
  aux2, new = gvbsm_terms.prepare(aux, state, state["conv"], jnp.ones(1),
                                  alpha)
  run = ((jnp.zeros(3), jnp.ones(3)),)
  got = gvbsm_terms.BNMatchOrZero()(jnp.zeros((5, 3)), aux2, None, run)
  ev = alpha * (prev + 3) + (1 - alpha) * jnp.var(x, 0)
  want = jnp.linalg.norm(ema) + jnp.linalg.norm(ev - 1.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  chex.assert_trees_all_close(new["bn"][0][0], ema, rtol=1e-6)


def test_patch_statistics_match_a_python_loop():
  x = np.asarray(jax.random.normal(jax.random.key(4), (3, 8, 12, 2)))
  cm, cv, pm, pv = gvbsm_terms.hook_stats(jnp.asarray(x))
  np.testing.assert_allclose(cm, x.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cv, x.var((0, 1, 2)), rtol=1e-5)
  want_m, want_v = [], []
  for i in range(2):
    for j in range(3):
      cell = x[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4, :]
      want_m.append(cell.mean())
      want_v.append(cell.var())
  np.testing.assert_allclose(pm, want_m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pv, want_v, rtol=1e-5)
  # 7 px maps are resized up to 8 (a 2 x 2 grid); linear inputs have none.
  chex.assert_shape(gvbsm_terms.hook_stats(jnp.ones((2, 7, 7, 3)))[2], (4,))
  chex.assert_shape(gvbsm_terms.hook_stats(jnp.ones((2, 5)))[2], (0,))


def test_drop_mask_with_fixed_key_and_first_hook_weight():
  key = jax.random.key(7)
  mask = gvbsm_terms.drop_mask(key, 6, 0.4)
  np.testing.assert_array_equal(mask, gvbsm_terms.drop_mask(key, 6, 0.4))
  np.testing.assert_array_equal(
      mask, jax.random.bernoulli(key, 0.6, (6,)).astype(jnp.float32))
  assert 0 < float(mask.sum()) < 6  # this key keeps some, drops some.
  np.testing.assert_array_equal(gvbsm_terms.drop_mask(key, 6, 0.0),
                                jnp.ones(6))
  xs = [jax.random.normal(jax.random.key(i), (2, 4, 4, 1)) for i in range(6)]
  targets = tuple(tuple(jnp.zeros_like(s) for s in gvbsm_terms.hook_stats(x))
                  for x in xs)

  def conv_loss(xs):
    stats = tuple(gvbsm_terms.hook_stats(x) for x in xs)
    aux = {"conv_stats": stats, "conv_targets": targets, "conv_keep": mask}
    return gvbsm_terms.ConvMatch(10.0)(None, aux, None, None)
  want = 0.0
  for l, x in enumerate(xs):
    if mask[l]:
      want += (10.0 if l == 0 else 1.0) * sum(
          float(jnp.linalg.norm(s)) for s in gvbsm_terms.hook_stats(x))
  np.testing.assert_allclose(conv_loss(xs), want, rtol=1e-5)
  grads = jax.grad(conv_loss)(xs)
  for l, g in enumerate(grads):
    assert bool(jnp.any(g != 0)) == bool(mask[l]), l


# ------------------------------------------------------- pool, step.


def test_parse_pool_and_bad_entries():
  assert gvbsm.parse_pool("convnet_bn, mlp:128") == (("convnet_bn", None),
                                                      ("mlp", 128))
  for bad, msg in (("vgg", "choose architectures"), ("mlp:x", "width"),
                   ("", "lists no teachers")):
    with pytest.raises(ValueError, match=msg):
      gvbsm.parse_pool(bad)
  cfgs = gvbsm.member_cfgs(teacher_lib.TeacherConfig(width=8),
                           "convnet_in,mlp:16")
  assert [(c.arch, c.width) for c in cfgs] == [("convnet_in", 8), ("mlp", 16)]
  spec = cfgs[0].model_spec(test_utils.tiny_dataset(shape=SHAPE))
  assert spec["arch"] == "convnet_bn" and spec["norm"] == "instance"


def test_pool_round_robin_and_ema_state():
  # Two teachers keep the compile time down; the other architectures'
  # conv inputs run in the preset and CLI tests.
  pool = [_teacher("convnet_bn"), _teacher("mlp")]
  x_real = jax.random.normal(jax.random.key(5), (20, *SHAPE))
  targets = [gvbsm.real_conv_stats(t, teacher_lib.TeacherConfig(), x_real, 8)
             for t in pool]
  # Means over full batches (2 of 8 images) of the batch statistics.
  mom = [gvbsm_terms.hook_stats(pool[1].model.apply(
      pool[1].variables, x_real[s:s + 8])[1]["conv_inputs"][0])
         for s in (0, 8)]
  chex.assert_trees_all_close(targets[1][0], jax.tree.map(
      lambda a, b: (a + b) / 2, mom[0], mom[1]), rtol=1e-5, atol=1e-6)
  cfg = recover.RecoverConfig(method="gvbsm", ipc=2, iterations=3, jitter=0)
  step = gvbsm.GvbsmStep(cfg, pool, targets, 3, (0.5,), (0.25,))
  x0 = jax.random.normal(jax.random.key(6), (3, 2, *SHAPE))
  state = outer.init_state(step.init_learned(x0), step.tx)
  y = jnp.repeat(jnp.arange(3), 2)
  used = []
  for _ in range(3):
    before = jax.tree.map(np.asarray, state.learned["ema"])
    state, m = step(state, y, jax.random.key(0))
    used.append(int(m["teacher"]))
    chex.assert_tree_all_finite((state.learned, m))
    for j in range(len(pool)):
      if j != used[-1]:  # only the teacher used moved its EMA state.
        chex.assert_trees_all_equal(before[j],
                                    jax.tree.map(np.asarray,
                                                 state.learned["ema"][j]))
  assert used == [0, 1, 0]
  assert float(m["bn"]) > 0 and float(m["conv"]) > 0 and float(m["dd"]) >= 0
  assert step.index.shape == (3, 2)  # class-grouped: one class a batch.


# --------------------------------------------------- relabel, post-train.


def test_ensemble_soft_labels_are_the_mean_of_members_softmax():
  members = [_teacher("convnet_bn", 0), _teacher("mlp", 1),
             _teacher("convnet_in", 2)]
  ens = relabel.Ensemble(members)
  x = jax.random.normal(jax.random.key(8), (4, *SHAPE))
  zs = [m.logits(x) for m in members]
  got = relabel.teacher_probs(ens, x, 20.0)
  want = sum(jax.nn.softmax(z / 20.0) for z in zs) / 3
  chex.assert_trees_all_close(got, want, rtol=1e-5)
  chex.assert_trees_all_close(relabel.teacher_logits(ens, x),
                              sum(zs) / 3, rtol=1e-5)
  _, targets = relabel.online_targets(ens, relabel.ViewConfig(), 20.0)
  chex.assert_trees_all_close(targets(None, 0, None, x, None), want,
                              rtol=1e-5)


def test_mse_ce_loss_against_hand_computation():
  z = np.array([[1.0, -0.5, 2.0], [0.0, 0.3, -1.0]], np.float32)
  t = np.array([[0.5, 0.0, 1.0], [1.0, 1.0, -2.0]], np.float32)
  y = np.array([[0.0, 0.0, 1.0], [0.7, 0.3, 0.0]], np.float32)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  want = np.mean((z - t) ** 2) + 0.15 * np.mean(-(y * logp).sum(1))
  got = posttrain.mse_ce_loss(0.15)(jnp.asarray(z),
                                    jnp.concatenate([t, y], 1))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  g = jax.grad(lambda v: posttrain.mse_ce_loss(0.15)(
      v, jnp.concatenate([t, y], 1)))(jnp.asarray(z))
  p = np.exp(logp)
  np.testing.assert_allclose(g, 2 * (z - t) / z.size
                             + 0.15 * (p * y.sum(1, keepdims=True) - y) / 2,
                             rtol=1e-5, atol=1e-7)
  # The targets are the teacher logits with the (mixed) labels appended.
  teacher = _teacher("mlp")
  _, logit_t = relabel.online_targets(teacher, relabel.ViewConfig(), 20.0,
                                      output="logits")
  fn = relabel.with_hard_labels(logit_t, jnp.asarray([2, 0]), 3)
  x = jax.random.normal(jax.random.key(9), (2, *SHAPE))
  out = fn(None, 0, jnp.arange(2), x, None)
  chex.assert_trees_all_close(out[:, :3], teacher.logits(x))
  chex.assert_trees_all_equal(out[:, 3:], jax.nn.one_hot(jnp.asarray([2, 0]),
                                                         3))


# --------------------------------------------------------- presets, CLI.


def test_gpu_presets_at_tiny_size(tmp_path):
  # Every GPU preset end to end at tiny size: its recover and post-train
  # protocol (batching, alpha, drop, crops, optimiser, MSE + CE) as set,
  # with MLP teachers and students (the architectures' conv inputs are
  # covered above and in the CLI run) so the compiles take seconds.
  ds = test_utils.tiny_dataset(n_train=60, n_val=12, n_test=12,
                               shape=(8, 8, 3))
  # Every preset's settings are checked; one of each optimiser runs.
  for name in ("gpu_gvbsm_cifar100_ipc50", "gpu_gvbsm_tiny_ipc50",
               "gpu_gvbsm_imagenet1k_ipc10"):
    cfg = presets.DECOUPLED(name)
    assert cfg.method == "gvbsm" and cfg.post_cfg().loss == "mse_ce"
    rc = cfg.recover_cfg()
    assert rc.batch_mode == "class_grouped" and rc.iterations == 4000
    assert len(gvbsm.parse_pool(cfg.gvbsm_pool)) == 4
    if name == "gpu_gvbsm_tiny_ipc50":  # sgd, as cifar100; imagenet: adamw
      continue
    cfg = cfg.replace_flat(
        ipc=2, val_size=12, teacher_arch="mlp", teacher_width=8,
        teacher_epochs=1, teacher_batch_size=30, gvbsm_pool="mlp,mlp:4",
        recover_iterations=2, recover_batch_size=2, recover_stats_batch=30,
        post_arch="mlp", post_width=4, post_epochs=1, post_batch_size=6,
        post_students=1, eval_hard=False, eval_random=False,
        eval_metrics=False, teacher_cache=str(tmp_path / "teachers"))
    rep = train_decoupled.run(cfg, str(tmp_path / name), dataset=ds,
                              show_progress=False)
    assert len(rep["pool"]) == 2 and rep["iterations"] == 2
    assert rep["evaluation"]["relabel_teacher"] == "ensemble of mlp w8, mlp w4"
    assert rep["evaluation"]["protocol"]["optimizer"] == (
        "adamw" if "imagenet" in name else "sgd")
    assert 0.0 <= rep["test_acc"]["mean"] <= 100.0


def test_cli_smoke_gvbsm(fake_data, tmp_path):
  proc = _run("decoupled", ["--preset=smoke", "--method=gvbsm",
                            "--noeval_metrics", "--post_epochs=4",
                            "--post_eval_every=2", "--post_students=1",
                            f"--teacher_cache={tmp_path / 'teachers'}"],
              fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["method"] == "gvbsm"
  assert [p["recipe"]["arch"] for p in report["pool"]] == [
      "convnet_bn", "convnet_in", "mlp"]
  assert report["teacher_test_acc"] > 0.5
  ev = report["evaluation"]
  assert ev["protocol"]["loss"] == "mse_ce"
  assert ev["relabel_teacher"] == ("ensemble of convnet_bn w8, convnet_in w8, "
                                   "mlp w16")
  assert {"soft", "hard", "random_real_soft", "random_real_hard"} <= set(ev)
  rows = [json.loads(l) for l in (tmp_path / "wd" / "recover" /
                                  "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 8 and np.isfinite(rows[-1]["loss"])
  assert {"bn", "conv", "dd", "teacher"} <= set(rows[-1])


def test_cli_bad_pool(fake_data, tmp_path):
  proc = _run("decoupled", ["--preset=smoke", "--method=gvbsm",
                            "--gvbsm_pool=convnet_bn,vgg"], fake_data,
              tmp_path, check=False)
  assert_one_line_error(proc, "gvbsm_pool entry 'vgg'")


def test_config_fields():
  cfg = presets.DECOUPLED("smoke").replace_flat(method="gvbsm",
                                                post_loss="kl")
  assert cfg.post_cfg().loss == "kl"
  assert presets.DECOUPLED("smoke").post_cfg().loss == "kl"
  assert dataclasses.replace(cfg.replace_flat(post_loss=""),
                             method="gvbsm").post_cfg().loss == "mse_ce"
  with pytest.raises(ValueError, match="ema_alpha"):
    cfg.replace_flat(recover_ema_alpha=1.5).validate()
