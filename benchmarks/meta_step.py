"""Cost of one DD meta-step: seconds, peak memory, FLOPs and GFLOP/s.

Setting (Dataset Distillation on MNIST): LeNet, 100 distilled images (10 per
step), real batch 1024, plain-GD inner steps with learned lrs. Sweeps
  * sampled initialisations J in {1, 4, 16} at 30 inner steps;
  * unroll length T in {30, 100, 300} with and without `jax.checkpoint`;
  * `alexcifarnet_cifar10`: the CIFAR-10 setting (AlexCifarNet, 32x32x3,
    30 inner steps, real batch 256).
Each configuration runs in its own process, so peak RSS is its own.

  python benchmarks/meta_step.py --out=/tmp/meta_step.json

Reported per configuration: median / min seconds per outer step (after
compilation), compile seconds, XLA FLOPs per step and achieved GFLOP/s,
XLA's temporary-buffer peak (`memory_analysis`), and process peak RSS.
"""

import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import xla_flops  # pylint: disable=g-import-not-at-top,wrong-import-position


def _build(spec: dict):
  """Compiles the outer step of `spec`; returns (run_once, info)."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from distill_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import dd_data as distilled  # pylint: disable=g-import-not-at-top
  from distill_jax.nn import models  # pylint: disable=g-import-not-at-top
  from distill_jax.nn import layers  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import dd as outer  # pylint: disable=g-import-not-at-top
  from distill_jax.platform import xla_options  # pylint: disable=g-import-not-at-top

  if jax.default_backend() == "cpu" and spec.get("tune_malloc", True):
    layers.tune_cpu_malloc()

  cfg = config_lib.DistillConfig(
      steps=spec["steps"], epochs=spec["epochs"], num_inits=spec["num_inits"],
      remat=spec["remat"], real_batch=spec["real_batch"],
      real_chunk=spec.get("real_chunk", 16),
      init_group=spec.get("init_group", 4),
      arch=spec.get("arch", "lenet"))
  shape, classes = tuple(spec.get("shape", (28, 28, 1))), 10
  model = models.build(cfg, shape, classes)
  learned, labels = distilled.init(
      jax.random.key(0), steps=cfg.steps, epochs=cfg.epochs,
      num_classes=classes, per_class=1, image_shape=shape, lr_init=0.02)
  tx = outer.optimizer(cfg, 50)
  step = outer.make_step(cfg, model.apply, model.init, tx)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4096, *shape)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, classes, 4096).astype(np.int32))
  key = jax.random.key(1)
  holder = {"state": outer.init_state(learned, tx)}

  def new_idx():
    return jnp.asarray(rng.permutation(4096)[:cfg.real_batch].astype(np.int32))

  t = time.perf_counter()
  compiled = step.lower(holder["state"], labels, x, y, new_idx(), key,
                        {}).compile()
  compile_s = time.perf_counter() - t
  xla_options.release_host_memory()  # as train.py does after compiling.

  def run_once() -> float:
    """One outer step on a fresh real batch; returns its seconds."""
    idx = new_idx()
    t = time.perf_counter()
    holder["state"], holder["metrics"] = step(holder["state"], labels, x, y,
                                              idx, key, {})
    jax.block_until_ready(holder["state"])
    return time.perf_counter() - t

  info = {"cfg": cfg, "model": model, "learned": learned, "labels": labels,
          "x": x, "y": y, "compiled": compiled, "compile_s": compile_s,
          "holder": holder}
  return run_once, info


def measure(spec: dict) -> dict:
  """Runs one configuration in this process and returns its figures."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  from distill_jax import platform  # pylint: disable=g-import-not-at-top
  # As the DD command lines: glibc's default malloc arenas.
  platform.configure(platform.Platform(
      malloc_arenas=spec.get("malloc_arenas", 0)))
  if "compare_inits" in spec:
    return measure_ratio(spec)
  run_once, info = _build(spec)
  cfg, compiled = info["cfg"], info["compiled"]
  mem = compiled.memory_analysis()
  temp_bytes = int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1
  run_once()  # warm-up
  times = [run_once() for _ in range(spec["runs"])]
  # Peak of the run itself: the FLOP count compiles more programs.
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  # The steps donated the initial state: count on the current one.
  flops = count_flops(cfg, info["model"], info["holder"]["state"].learned,
                      info["labels"], info["x"], info["y"])
  med = statistics.median(times)
  return {**spec, "inner_steps": cfg.inner_steps,
          "median_s": round(med, 4), "min_s": round(min(times), 4),
          "compile_s": round(info["compile_s"], 2),
          "gflop_per_step": round(flops / 1e9, 3),
          "gflops_per_s": round(flops / 1e9 / med, 1),
          "xla_temp_mib": round(temp_bytes / 2**20, 1),
          "peak_rss_mib": round(peak_rss, 1),
          "loss": float(info["holder"]["metrics"]["loss"]), "backend": jax.default_backend(),
          "jax": jax.__version__}


def measure_ratio(spec: dict) -> dict:
  """Seconds per step of J = a and J = b inits, timed alternately in ONE
  process, so both see the same machine load; reports the median of the
  per-round ratios (robust to this machine's slow drifts in speed)."""
  a, b = spec["compare_inits"]
  run_a, _ = _build({**spec, "num_inits": a})
  run_b, _ = _build({**spec, "num_inits": b})
  run_a(), run_b()  # warm-up
  ta, tb = [], []
  for _ in range(spec["runs"]):
    ta.append(run_a())
    tb.append(run_b())
  ratios = [y / x for x, y in zip(ta, tb)]
  return {**spec, f"median_s_{a}": round(statistics.median(ta), 4),
          f"median_s_{b}": round(statistics.median(tb), 4),
          "ratio_median": round(statistics.median(ratios), 2),
          "ratio_min": round(min(ratios), 2),
          "ratio_max": round(max(ratios), 2)}


def count_flops(cfg, model, learned, labels, x, y) -> float:
  """Executed FLOPs of one outer step, composed from scan-free pieces.

  XLA's cost analysis counts a `while` body once, so the step is counted by
  parts, each compiled without loops: per initialisation, the real-batch
  loss gradient (plus its forward again when the chunked loss
  rematerialises it), T inner steps forward, and T inner-step VJPs (each
  with its forward recomputed when `remat != "none"`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from distill_jax.core import inner  # pylint: disable=g-import-not-at-top

  params = model.init(jax.random.key(0))
  rx, ry = x[:cfg.real_batch], y[:cfg.real_batch]
  real_grad = xla_flops(
      jax.grad(lambda p: inner.loss(model.apply, p, rx, ry)), params)
  real_fwd = xla_flops(lambda p: inner.loss(model.apply, p, rx, ry), params)
  sx, sy = learned["x"][0], labels[0]

  def step(p, xx, lr):
    return inner.gd_step(model.apply, p, xx, sy, lr)
  fwd = xla_flops(step, params, sx, 0.01)

  def step_vjp(p, xx, lr):
    out, vjp = jax.vjp(step, p, xx, lr)
    return vjp(out)
  vjp = xla_flops(step_vjp, params, sx, 0.01)
  if cfg.remat == "none":
    vjp -= fwd
  per_init = (real_grad + (real_fwd if cfg.real_chunk else 0.0) +
              cfg.inner_steps * (fwd + vjp))
  return per_init * cfg.num_inits


def configs(runs: int, quick: bool) -> list[dict]:
  base = {"steps": 10, "epochs": 3, "num_inits": 1, "remat": "full",
          "real_batch": 1024, "runs": runs}
  out = []
  for j in ((1, 4) if quick else (1, 4, 16)):
    out.append({**base, "name": f"inits_{j}", "num_inits": j})
  if not quick:
    out.append({**base, "name": "ratio_16_over_1", "compare_inits": (1, 16)})
  for epochs in ((3, 10) if quick else (3, 10, 30)):
    for remat in ("none", "full"):
      out.append({**base, "name": f"unroll_{10 * epochs}_{remat}",
                  "epochs": epochs, "remat": remat})
  if not quick:  # The CIFAR-10 Table 1 setting (experiments.dd_cifar10).
    out.append({**base, "name": "alexcifarnet_cifar10", "arch": "alexcifarnet",
                "shape": (32, 32, 3), "real_batch": 256,
                "runs": max(2, runs // 2)})
  return out


def summarize(by: dict) -> dict:
  summary = {}
  if "ratio_16_over_1" in by:
    summary["inits_16_over_1_interleaved"] = by["ratio_16_over_1"][
        "ratio_median"]
  if "inits_1" in by and "inits_16" in by:
    summary["inits_16_over_1"] = round(
        by["inits_16"]["median_s"] / by["inits_1"]["median_s"], 2)
  if "unroll_30_full" in by and "unroll_300_full" in by:
    summary["rss_300_over_30_remat"] = round(
        by["unroll_300_full"]["peak_rss_mib"] /
        by["unroll_30_full"]["peak_rss_mib"], 2)
    summary["xla_temp_300_over_30_remat"] = round(
        by["unroll_300_full"]["xla_temp_mib"] /
        max(by["unroll_30_full"]["xla_temp_mib"], 1e-9), 2)
  return summary


def main():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import sweep  # pylint: disable=g-import-not-at-top
  sweep.main(__file__, __doc__, "meta_step.json", 10, configs, measure,
             summarize)


if __name__ == "__main__":
  main()
