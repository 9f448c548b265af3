"""The outer step shards initialisations over devices with the same result.

Runs in a subprocess with 2 forced CPU devices (the device count must be
fixed before JAX initialises)."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import chex
    from distill_jax import outer, sharding
    from tests import test_utils
    assert jax.device_count() == 2, jax.devices()
    cfg = test_utils.tiny_config(num_inits=4)
    assert sharding.inits_mesh(4) is not None
    assert sharding.inits_mesh(3) is None
    model, learned, labels, _, rx, ry = test_utils.tiny_problem(cfg)
    tx = outer.optimizer(cfg, 4)
    step = outer.make_step(cfg, model.apply, model.init, tx)
    state = outer.init_state(jax.tree.map(jnp.copy, learned), tx)
    state, m = step(state, labels, rx, ry, jnp.arange(16), jax.random.key(0),
                    {})
    np.save("sharded.npy", np.asarray(state.learned["x"]))
    print("loss", float(m["loss"]))
""")


def test_two_devices_match_one(tmp_path):
  results = {}
  for n in (1, 2):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    script = SCRIPT if n == 2 else SCRIPT.replace(
        "assert jax.device_count() == 2, jax.devices()", "").replace(
            "assert sharding.inits_mesh(4) is not None", "")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import numpy as np  # pylint: disable=g-import-not-at-top
    results[n] = np.load(tmp_path / "sharded.npy")
  np.testing.assert_allclose(results[1], results[2], rtol=1e-4, atol=1e-6)
