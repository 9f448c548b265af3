"""Cost of one RaT-BPTT meta-step: seconds, memory, FLOPs and GFLOP/s.

Configurations (each in its own process, so peak RSS is its own):
  * total N in {100, 300, 1000} at window M = 50 (random starts);
  * the three modes (random / end / full) at equal N = 100, M = 50;
  * ref_fashion: full Fashion-MNIST shapes, ConvNet-3 w128 instance norm,
    1 image/class, 20 differentiable steps (N = M = 20), SGD momentum 0.9
    lr 0.01, flip/rotate, real batch 200, 1 init. The released PyTorch
    code: 1.36 s/step, 2.3 GiB (PERFORMANCE.md, on an AVX-512 machine with a
    ~430 GFLOP/s matmul; on another CPU compare with torch_step.py run in the
    same sitting);
  * ref_cifar10: CIFAR-10 recipe, window 60 of 200, Adam 1e-3, real batch
    5000, IPC 10 (10 per class per step), 1 init. Reference: 28.5 s/step,
    14.0 GiB;
  * gpu_fashion_ipc1 / gpu_fashion_ipc10: the Fashion-MNIST GPU presets
    (window 60 of 200, Adam 1e-3, IPC images per class per step, real batch
    1000 / 5000), to know what their 12,000 outer steps cost on a CPU.
The sweeps use the Fashion-MNIST shapes of ref_fashion. Random data of the
right shapes is used (cost does not depend on pixel values).

  python benchmarks/rat_bptt_step.py --out=/tmp/rat_bptt_step.json

Reported per configuration: median / min seconds per outer step after
compilation, compile seconds, XLA FLOPs per step (`cost_analysis`) and
achieved GFLOP/s and its fraction of this machine's measured f32 matmul
ceiling (`sweep.machine_info`, also written to the JSON), XLA temporary bytes
(`memory_analysis`), process peak RSS.
For "random" the time depends on the sampled starts (vmapped prefixes run to
the largest); the median is over `--runs` steps with fresh starts.
"""

import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import xla_flops  # pylint: disable=g-import-not-at-top,wrong-import-position


def measure(spec: dict) -> dict:
  """Runs one configuration in this process and returns its figures."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from distill_jax.nn import models  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import rat_bptt  # pylint: disable=g-import-not-at-top
  from distill_jax import platform  # pylint: disable=g-import-not-at-top
  from distill_jax.platform import xla_options  # pylint: disable=g-import-not-at-top

  # One malloc arena as the RaT command lines; large blocks stay mapped where
  # the spec says so, as rat_bptt_cifar does for the CIFAR recipe.
  keep_mapped = spec.pop("keep_mapped", False)
  platform.configure(platform.Platform(malloc_arenas=spec.pop(
      "malloc_arenas", 1), keep_malloc_mapped=keep_mapped))
  shape, classes = tuple(spec.pop("shape")), 10
  runs = spec.pop("runs")
  name = spec.pop("name")
  cfg = rat_bptt.RatConfig(**spec).validate()
  model = models.build(cfg, shape, classes)
  tx = rat_bptt.outer_optimizer(cfg)
  state = rat_bptt.init_state(
      rat_bptt.init_learned(jax.random.key(0), cfg, classes, shape), tx)
  step = rat_bptt.make_step(cfg, model, tx)
  fixed = rat_bptt.empty_fixed(classes, shape)
  n = max(2 * cfg.real_batch, 1000)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(n, *shape)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, classes, n).astype(np.int32))
  key = jax.random.key(1)

  def idx():
    return jnp.asarray(rng.permutation(n)[:cfg.real_batch].astype(np.int32))

  t = time.perf_counter()
  compiled = step.lower(state, fixed, x, y, idx(), key).compile()
  compile_s = time.perf_counter() - t
  xla_options.release_host_memory()  # as rat_train does after compiling.
  mem = compiled.memory_analysis()
  temp_bytes = int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1
  state, m = step(state, fixed, x, y, idx(), key)  # warm-up
  jax.block_until_ready(state)
  times, starts = [], []
  for _ in range(runs):
    t = time.perf_counter()
    state, m = step(state, fixed, x, y, idx(), key)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
    starts.append(float(m["start_mean"]))
  # Peak of the run itself: the FLOP count below compiles more programs.
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  med = statistics.median(times)
  mean_start = statistics.mean(starts)
  flops = count_flops(cfg, model, state.learned, fixed, x, y, mean_start)
  return {"name": name, **spec, "shape": list(shape),
          "median_s": round(med, 4), "min_s": round(min(times), 4),
          "compile_s": round(compile_s, 2), "mean_start": mean_start, "gflop_per_step": round(flops / 1e9, 3),
          "gflops_per_s": round(flops / 1e9 / med, 1),
          "xla_temp_mib": round(temp_bytes / 2**20, 1),
          "peak_rss_mib": round(peak_rss, 1), "keep_mapped": keep_mapped,
          "loss": float(m["loss"]), "backend": jax.default_backend(),
          "jax": jax.__version__}


def count_flops(cfg, model, learned, fixed, x, y, mean_start: float) -> float:
  """Executed FLOPs of one outer step, composed from loop-free pieces.

  XLA's cost analysis counts a `while` body once, so the step is counted by
  parts: per initialisation, the real-batch loss gradient (plus its forward
  again when the chunked loss rematerialises it), `mean_start` forward-only
  prefix steps, and M window steps, each a forward plus a VJP (the VJP
  recomputes its forward when `remat != "none"`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from distill_jax.methods import rat_bptt  # pylint: disable=g-import-not-at-top
  from distill_jax.core import inner  # pylint: disable=g-import-not-at-top
  from distill_jax.core import unroll  # pylint: disable=g-import-not-at-top

  params = model.init(jax.random.key(0))
  rx, ry = x[:cfg.real_batch], y[:cfg.real_batch]
  real_grad = xla_flops(
      jax.grad(lambda p: inner.loss(model.apply, p, rx, ry)), params)
  real_fwd = xla_flops(lambda p: inner.loss(model.apply, p, rx, ry), params)
  prob = rat_bptt.problem(cfg, model)
  state = inner.init_state(params, prob.tx)
  step = unroll.make_step(prob.schedule, apply_fn=model.apply, tx=prob.tx,
                          syn_aug=cfg.syn_aug, rotate_deg=cfg.rotate_deg,
                          key=jax.random.key(2))

  def fwd(s, lrn):
    return step(s, 0, (rat_bptt.support(lrn, fixed), lrn.get("raw_lr")),
                None)

  def fwd_vjp(s, lrn):
    out, vjp = jax.vjp(fwd, s, lrn)
    return vjp(out)
  f = xla_flops(fwd, state, learned)
  v = xla_flops(fwd_vjp, state, learned)
  if cfg.remat == "none":
    v -= f
  per_init = (real_grad + (real_fwd if cfg.real_chunk else 0.0) +
              mean_start * f + cfg.window_len * (f + v))
  return per_init * cfg.num_inits


FASHION = dict(shape=(28, 28, 1), arch="convnet", width=128, depth=3,
               norm="instance", pooling="avg", init="torch", ipc=1,
               batch_per_class=1, inner_opt="sgd", inner_lr=0.01,
               inner_momentum=0.9, syn_aug="flip_rotate",
               real_aug="flip_rotate", real_batch=200, num_inits=1)


def configs(runs: int, quick: bool) -> list[dict]:
  base = {**FASHION, "runs": runs}
  out = []
  for total in ((100,) if quick else (100, 300, 1000)):
    out.append({**base, "name": f"N{total}_M50_random", "total_steps": total,
                "window": 50, "truncation": "random"})
  for mode in ("end", "full"):
    out.append({**base, "name": f"N100_M50_{mode}", "total_steps": 100,
                "window": 50, "truncation": mode})
  out.append({**base, "name": "ref_fashion", "total_steps": 20, "window": 20,
              "truncation": "full"})
  if not quick:
    out.append({**base, "name": "ref_cifar10", "shape": (32, 32, 3),
                "ipc": 10, "batch_per_class": 10, "total_steps": 200,
                "window": 60, "truncation": "random", "inner_opt": "adam",
                "inner_lr": 1e-3, "real_batch": 5000, "runs": min(runs, 3),
                "keep_mapped": True})
    # The same recipe at real batch 1,000: the size at which torch_step.py's
    # PyTorch re-creation fits a 24 GB machine (same-machine comparison).
    out.append({**out[-1], "name": "ref_cifar10_real1000", "real_batch": 1000})
    # The Fashion-MNIST GPU presets (rat_bptt_fashion --preset=gpu_ipc1 /
    # gpu_ipc10: B.8's recipe on 28x28): what 12,000 outer steps would cost
    # on this CPU.
    for ipc, real in ((1, 1000), (10, 5000)):
      out.append({**base, "name": f"gpu_fashion_ipc{ipc}", "ipc": ipc,
                  "batch_per_class": ipc, "total_steps": 200, "window": 60,
                  "truncation": "random", "inner_opt": "adam",
                  "inner_lr": 1e-3, "real_batch": real,
                  "runs": min(runs, 3)})
  return out


# The released PyTorch code's figures (PERFORMANCE.md), measured on a 2-core
# AVX-512 machine whose f32 matmul reached ~430 GFLOP/s. On another CPU the
# ratio below is not a comparison: run benchmarks/torch_step.py (a PyTorch
# re-creation of the same step) in the same sitting instead.
REFERENCE = {"ref_fashion": {"s_per_step": 1.36, "gib": 2.3},
             "ref_cifar10": {"s_per_step": 28.5, "gib": 14.0}}
REFERENCE_MACHINE_GFLOPS = 430.0


def summarize(by: dict) -> dict:
  summary = {}
  for name, ref in REFERENCE.items():
    if name in by:
      summary[f"{name}_time_over_pytorch_figure"] = round(
          by[name]["median_s"] / ref["s_per_step"], 2)
      summary[f"{name}_rss_gib"] = round(by[name]["peak_rss_mib"] / 1024, 2)
  if summary:
    summary["pytorch_figures_machine_matmul_gflops"] = REFERENCE_MACHINE_GFLOPS
  if "N100_M50_random" in by and "N1000_M50_random" in by:
    summary["xla_temp_N1000_over_N100"] = round(
        by["N1000_M50_random"]["xla_temp_mib"] /
        max(by["N100_M50_random"]["xla_temp_mib"], 1e-9), 2)
  return summary


def main():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import sweep  # pylint: disable=g-import-not-at-top
  sweep.main(__file__, __doc__, "rat_bptt_step.json", 5, configs, measure,
             summarize)


if __name__ == "__main__":
  main()
