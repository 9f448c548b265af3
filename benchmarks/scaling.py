"""Outer-step throughput against device count, on forced CPU devices.

Small shapes (16x16x1 images, 10 classes, an MLP with one hidden layer of
128 units, 8 sampled initialisations, real batch 128): DD with 5 inner steps and
RaT-BPTT with 6 unrolled steps and a window of 3, with the initialisations on the
mesh's "inits" axis over 1, 2, 4 and 8 devices, each count in its own
process (XLA_FLAGS=--xla_force_host_platform_device_count=N), plus "2x4":
two processes of 4 devices joined by `jax.distributed` over localhost
(gloo collectives), process 0 timing.

  python benchmarks/scaling.py --out=/tmp/scaling.json

Reported per (method, devices): median / min seconds per outer step after
compilation, outer steps per second, compile seconds, the loss after the
timed steps (the same across device counts, up to float rounding), and the
machine's CPU count. Forced CPU devices share the host's cores: the
numbers measure what partitioning costs (collectives, per-device program
overheads) on a fixed amount of compute, not the speed-up of real
accelerators, where each device brings its own compute and memory.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("dd", "rat_bptt")
DEVICES = ("1", "2", "4", "8", "2x4")


def _measure(method: str, runs: int) -> dict:
  """Times `runs` outer steps of `method` on every visible device."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from distill_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import dd  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import dd_data  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import rat_bptt  # pylint: disable=g-import-not-at-top
  from distill_jax.nn import models  # pylint: disable=g-import-not-at-top

  shape, classes, n = (16, 16, 1), 10, 1024
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, *shape)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, classes, n).astype(np.int32))
  key = jax.random.key(1)
  if method == "dd":
    cfg = config_lib.DistillConfig(
        arch="mlp", mlp_hidden=(128,), steps=5, epochs=1, num_inits=8,
        real_batch=128, init_mode="random").validate()
    model = models.build(cfg, shape, classes)
    learned, labels = dd_data.init(
        jax.random.key(0), steps=cfg.steps, epochs=cfg.epochs,
        num_classes=classes, per_class=1, image_shape=shape, lr_init=0.02)
    tx = dd.optimizer(cfg, 8)
    step = dd.make_step(cfg, model.apply, model.init, tx)
    state = dd.init_state(learned, tx)
    args = lambda idx: (labels, x, y, idx, key, {})  # pylint: disable=unnecessary-lambda-assignment
    batch = cfg.real_batch
  else:
    cfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(128,), ipc=1, total_steps=6, window=3,
        num_inits=8, init_group=0, real_batch=128, val_size=4).validate()
    model = models.build(cfg, shape, classes)
    tx = rat_bptt.outer_optimizer(cfg)
    state = rat_bptt.init_state(
        rat_bptt.init_learned(jax.random.key(0), cfg, classes, shape), tx)
    step = rat_bptt.make_step(cfg, model, tx)
    fixed = rat_bptt.empty_fixed(classes, shape)
    args = lambda idx: (fixed, x, y, idx, key)  # pylint: disable=unnecessary-lambda-assignment
    batch = cfg.real_batch

  def idx(i):
    return jnp.asarray(np.random.default_rng(i).permutation(n)[:batch]
                       .astype(np.int32))
  t = time.perf_counter()
  step.lower(state, *args(idx(0))).compile()
  compile_s = time.perf_counter() - t
  state, m = step(state, *args(idx(0)))  # warm-up
  jax.block_until_ready(state)
  times = []
  for i in range(runs):
    t = time.perf_counter()
    state, m = step(state, *args(idx(i + 1)))
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  med = statistics.median(times)
  return {"median_s": round(med, 4), "min_s": round(min(times), 4),
          "steps_per_s": round(1 / med, 2), "compile_s": round(compile_s, 2),
          "loss": float(m["loss"]), "devices": jax.device_count(),
          "processes": jax.process_count()}


def _child(method: str, runs: int, nproc: int, pid: int, port: int) -> None:
  if nproc > 1:
    sys.path.insert(0, ROOT)
    from distill_jax.platform import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(f"localhost:{port}", nproc, pid)
  out = _measure(method, runs)
  if pid == 0:
    print("RESULT " + json.dumps(out), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(method: str, devices: str, runs: int) -> dict:
  nproc, per = (2, 4) if devices == "2x4" else (1, int(devices))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={per}")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--child", method,
       str(runs), str(nproc), str(pid), str(port)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in range(nproc)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    if p.returncode:
      raise RuntimeError(f"{method} on {devices} devices failed:\n"
                         f"{err[-2000:]}")
  line = [l for l in outs[0][0].splitlines() if l.startswith("RESULT ")][0]
  return {"method": method, "mesh": devices, **json.loads(line[7:])}


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    method, runs, nproc, pid, port = sys.argv[2:7]
    _child(method, int(runs), int(nproc), int(pid), int(port))
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="JSON output file")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--devices", default=",".join(DEVICES))
  parser.add_argument("--runs", type=int, default=5,
                      help="timed outer steps per configuration")
  args = parser.parse_args()
  methods, devices = args.methods.split(","), args.devices.split(",")
  bad = sorted(set(methods) - set(METHODS)) + sorted(set(devices) -
                                                     set(DEVICES))
  if bad:
    parser.error(f"unknown configurations {bad}; choose from "
                 f"{list(METHODS)} and devices {list(DEVICES)}")
  rows = []
  for method in methods:
    for d in devices:
      rows.append(_run(method, d, args.runs))
      print(json.dumps(rows[-1]), flush=True)
  with open(args.out, "w") as f:
    json.dump({"cpu_count": os.cpu_count(),
               "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
