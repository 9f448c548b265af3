"""Sharded steps give the single-device result on 8 forced CPU devices.

DD and RaT-BPTT share the sharded meta-gradient of the core (8
initialisations on the "inits" axis); one recover iteration and one student
step shard their batch on the "data" axis (train-mode BatchNorm statistics
stay means over the whole batch); replay and retrain evaluation shard
held-out initialisations on "inits" and stored relabelling its images on
"data", padding counts the devices do not divide. Runs in subprocesses (the device count
must be fixed before JAX initialises)."""

import os
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from distill_jax.methods import rat_bptt
    from distill_jax.nn import models
    from distill_jax.platform import mesh as sharding
    from distill_jax.methods import dd
    from tests import test_utils
    devices = int(sys.argv[1])
    assert jax.device_count() == devices, jax.devices()
    mesh = sharding.build("auto", sharding.INITS)
    assert (mesh is not None) == (devices > 1)
    if devices > 1:
      try:
        sharding.check_divisible(mesh, sharding.INITS, 3, "num_inits")
        raise AssertionError("num_inits=3 on 8 devices was not refused")
      except ValueError as e:
        assert "num_inits=3" in str(e) and "8 devices" in str(e), e
    # DD.
    cfg = test_utils.tiny_config(num_inits=8)
    model, learned, labels, _, rx, ry = test_utils.tiny_problem(cfg)
    tx = dd.optimizer(cfg, 8)
    step = dd.make_step(cfg, model.apply, model.init, tx)
    state = dd.init_state(jax.tree.map(jnp.copy, learned), tx)
    for _ in range(2):
      state, m = step(state, labels, rx, ry, jnp.arange(16),
                      jax.random.key(0), {})
    out = {"dd_x": np.asarray(state.learned["x"]), "dd_loss": float(m["loss"])}
    # RaT-BPTT: random windows, 4 initialisations.
    rcfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=2, total_steps=4, window=2,
        num_inits=8, init_group=0, inner_opt="sgd", inner_lr=0.1,
        real_batch=16, val_size=4).validate()
    shape, c = test_utils.IMAGE_SHAPE, test_utils.NUM_CLASSES
    rmodel = models.build(rcfg, shape, c)
    rtx = rat_bptt.outer_optimizer(rcfg)
    rstep = rat_bptt.make_step(rcfg, rmodel, rtx)
    rstate = rat_bptt.init_state(
        rat_bptt.init_learned(jax.random.key(1), rcfg, c, shape), rtx)
    fixed = rat_bptt.empty_fixed(c, shape)
    for _ in range(2):
      rstate, rm = rstep(rstate, fixed, rx, ry, jnp.arange(16),
                         jax.random.key(2))
    out["rat_x"] = np.asarray(rstate.learned["x"])
    out["rat_loss"] = float(rm["loss"])
    # One recover iteration (SRe2L terms, eval-mode BN teacher), its batch
    # of 8 images on the "data" axis.
    from distill_jax.eval import fit
    from distill_jax.methods.decoupled import recover, teacher as teacher_lib
    from distill_jax.methods.decoupled import terms
    from distill_jax.nn import stat_models
    dmesh = sharding.build("auto", sharding.DATA)
    bshape = (8, 8, 1)
    bn = stat_models.build(arch="convnet_bn", width=4, depth=1,
                           num_classes=4, image_shape=bshape)
    v = bn.init(jax.random.key(3))
    teacher = teacher_lib.Teacher(bn, v, {})
    rcfg = recover.RecoverConfig(ipc=2, crop=False, jitter=1, flip=True)
    fn = jax.jit(recover.grad_fn(rcfg, teacher, terms.sre2l(0.5, 10.0),
                                 bshape, dmesh))
    xr = jax.random.normal(jax.random.key(4), (4, 2, *bshape))
    loss, g, _ = fn({"x": xr}, jnp.int32(0), jnp.arange(8)[None],
                    jnp.repeat(jnp.arange(4), 2), jax.random.key(5))
    out["rec_loss"], out["rec_g"] = float(loss), np.asarray(g["x"])
    # One student step: train-mode BN, batch 8 of 16 on the "data" axis.
    xs = jax.random.normal(jax.random.key(6), (16, *bshape))
    ys = jnp.arange(16) % 4
    tx = teacher_lib.optimizer("sgd", 0.1, 10, schedule="constant",
                               weight_decay=0.0)
    trainer = fit.supervised(
        bn, tx, xs, fit.epoch_batches(16, 8), teacher_lib.cross_entropy,
        targets=lambda key, t, idx, images, mixing: ys[idx], mesh=dmesh)
    key = jax.random.key(7)
    per_net = {"init_key": key[None], "key": key[None],
               "keys": jax.random.split(key, 1)[None]}
    got = fit.fit(trainer, per_net, (1,))
    leaves = jax.tree.leaves(got)
    out["student"] = np.concatenate([np.ravel(a) for a in leaves])
    # Evaluation over held-out initialisations ("inits"): replay of the DD
    # set and retraining, 5 networks in chunks of 3 (padded to the 8
    # devices); stored soft labels of 12 images in chunks of 5 ("data").
    from distill_jax.eval import replay
    from distill_jax.methods.decoupled import relabel
    p5 = jax.vmap(model.init)(jax.random.split(jax.random.key(8), 5))
    trained = replay.replay(model.apply, p5, state.learned, labels, epochs=1,
                            chunk=3)
    out["replay"] = np.concatenate([np.ravel(a) for a in
                                    jax.tree.leaves(trained)])
    assert not np.allclose(out["replay"], np.concatenate(
        [np.ravel(a) for a in jax.tree.leaves(p5)]))
    out["retrain"] = replay.retrain_accuracy(
        model.apply, p5, jax.random.key(9), state.learned["x"], labels, rx,
        ry, lr=0.1, epochs=2, batch_size=4, batch=16)
    stored = relabel.store(teacher, xs[:12], 2, relabel.ViewConfig(
        seed=1, min_scale=0.5), chunk=5)
    out["relabel"] = np.asarray(stored.dense(), np.float32)
    np.savez("out.npz", **out)
""")


def test_eight_devices_match_one(tmp_path):
  results = {}
  for n in (1, 8):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               JAX_DISABLE_MOST_OPTIMIZATIONS="true",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n)],
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as z:
      results[n] = {k: z[k] for k in z.files}
  for k in ("dd_x", "dd_loss", "rat_x", "rat_loss", "rec_loss", "rec_g",
            "student", "replay", "retrain", "relabel"):
    np.testing.assert_allclose(results[1][k], results[8][k], rtol=1e-4,
                               atol=1e-6, err_msg=k)
  # The runs moved the images (a no-op step would also "match").
  assert np.abs(results[8]["rat_x"]).sum() > 0
  assert np.abs(results[8]["rec_g"]).sum() > 0
