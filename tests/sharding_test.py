"""The outer steps shard initialisations over devices with the same result.

DD and RaT-BPTT share the sharded meta-gradient of the core: 4
initialisations on 2 forced CPU devices must equal the single-device run.
Runs in subprocesses (the device count must be fixed before JAX
initialises)."""

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
    assert (mesh is not None) == (devices == 2)
    if devices == 2:
      try:
        sharding.check_divisible(mesh, sharding.INITS, 3, "num_inits")
        raise AssertionError("num_inits=3 on 2 devices was not refused")
      except ValueError as e:
        assert "num_inits=3" in str(e) and "2 devices" in str(e), e
    # DD.
    cfg = test_utils.tiny_config(num_inits=4)
    model, learned, labels, _, rx, ry = test_utils.tiny_problem(cfg)
    tx = dd.optimizer(cfg, 4)
    step = dd.make_step(cfg, model.apply, model.init, tx)
    state = dd.init_state(jax.tree.map(jnp.copy, learned), tx)
    for _ in range(2):
      state, m = step(state, labels, rx, ry, jnp.arange(16),
                      jax.random.key(0), {})
    out = {"dd_x": np.asarray(state.learned["x"]), "dd_loss": float(m["loss"])}
    # RaT-BPTT: random windows, 4 initialisations.
    rcfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=2, total_steps=4, window=2,
        num_inits=4, init_group=0, inner_opt="sgd", inner_lr=0.1,
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
    np.savez("out.npz", **out)
""")


def test_two_devices_match_one(tmp_path):
  results = {}
  for n in (1, 2):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n)],
                          cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as z:
      results[n] = {k: z[k] for k in z.files}
  for k in ("dd_x", "dd_loss", "rat_x", "rat_loss"):
    np.testing.assert_allclose(results[1][k], results[2][k], rtol=1e-4,
                               atol=1e-6, err_msg=k)
  # The runs moved the images (a no-op step would also "match").
  assert np.abs(results[2]["rat_x"]).sum() > 0
