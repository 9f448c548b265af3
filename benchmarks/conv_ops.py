"""Per-op and meta-step timings of distill_jax.nn.layers implementations.

Prints one JSON document with, for each implementation, the median wall time
(after warm-up) of LeNet/MNIST building blocks on a batch of 1024, the full
LeNet forward + weight gradient, and a full dataset-distillation meta-step
(30 inner GD steps on 10 distilled images each, real batch 1024, reverse-mode
meta-gradient w.r.t. images and learning rates through a ``lax.scan``).
Optionally the same per-op breakdown in PyTorch if ``torch`` is importable.

Usage:
  python benchmarks/conv_ops.py [--impls xla,fast] [--runs 20] [--no_torch]
  python benchmarks/conv_ops.py --torch_only   # run inside a torch venv

XLA flags must be in ``XLA_FLAGS`` before the process starts (jax reads
them at backend initialisation).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = 1024
STEPS = 30
N_DISTILL = 10
# (name, impl for conv, impl for pool)
IMPLS = {
    "xla": ("xla", "xla"),
    "fast": ("im2col_t", "reshape"),
    "im2col": ("im2col", "reshape"),
    "auto": ("auto", "auto"),
    "im2col_xlapool": ("im2col", "xla"),
    "xla_reshapepool": ("xla", "reshape"),
    "shift": ("shift", "reshape"),
}


def _median_time(fn, args, runs, warmup=3):
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts)), float(np.min(ts))


def conv_flops(n, ho, wo, k, ci, co):
  return 2.0 * n * ho * wo * k * k * ci * co


def _lenet_fwd_flops(n):
  return (conv_flops(n, 28, 28, 5, 1, 6) + conv_flops(n, 10, 10, 5, 6, 16) +
          2.0 * n * (400 * 120 + 120 * 84 + 84 * 10))


def run_jax(impl_names, runs, meta_runs, checkpoint):
  """Times every op for each implementation; returns a dict."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from distill_jax.nn import layers  # pylint: disable=g-import-not-at-top

  key = jax.random.PRNGKey(0)
  ks = jax.random.split(key, 12)
  x1 = jax.random.normal(ks[0], (BATCH, 28, 28, 1))
  w1 = jax.random.normal(ks[1], (5, 5, 1, 6)) * 0.2
  x2 = jax.random.normal(ks[2], (BATCH, 14, 14, 6))
  w2 = jax.random.normal(ks[3], (5, 5, 6, 16)) * 0.1
  p1 = jax.random.normal(ks[4], (BATCH, 28, 28, 6))
  d1 = jax.random.normal(ks[5], (BATCH, 400))
  wd1 = jax.random.normal(ks[6], (400, 120)) * 0.05
  labels = jax.random.randint(ks[7], (BATCH,), 0, 10)

  shapes = [(5, 5, 1, 6), (5, 5, 6, 16), (400, 120), (120, 84), (84, 10)]
  fan_in = [25, 150, 400, 120, 84]
  params = [(jax.random.normal(k, s) / np.sqrt(f), jnp.zeros(s[-1]))
            for k, s, f in zip(jax.random.split(ks[8], 5), shapes, fan_in)]
  distilled = jax.random.normal(ks[9], (STEPS, N_DISTILL, 28, 28, 1))
  lrs = jnp.full((STEPS,), 0.02)
  d_labels = jnp.arange(N_DISTILL) % 10

  results = {}
  for name in impl_names:
    cimpl, pimpl = IMPLS[name]

    def conv(x, w, pad, cimpl=cimpl):
      return layers.conv2d(x, w, padding=pad, impl=cimpl)

    def pool(x, pimpl=pimpl):
      return layers.max_pool(x, 2, impl=pimpl)

    def lenet(p, x, conv=conv, pool=pool):
      (cw1, cb1), (cw2, cb2), (fw1, fb1), (fw2, fb2), (fw3, fb3) = p
      x = pool(jax.nn.relu(conv(x, cw1, 2) + cb1))
      x = pool(jax.nn.relu(conv(x, cw2, 0) + cb2))
      x = x.reshape(x.shape[0], -1)
      x = jax.nn.relu(x @ fw1 + fb1)
      x = jax.nn.relu(x @ fw2 + fb2)
      return x @ fw3 + fb3

    def xent(p, x, y, lenet=lenet):
      logp = jax.nn.log_softmax(lenet(p, x))
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def meta_loss(distilled, lrs, p, xr, yr, xent=xent):
      def body(p, inp):
        xs, lr = inp
        g = jax.grad(xent)(p, xs, d_labels)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), None
      if checkpoint:
        body = jax.checkpoint(body)
      p, _ = jax.lax.scan(body, p, (distilled, lrs))
      return xent(p, xr, yr)

    ops = {
        "conv1_fwd": (
            jax.jit(lambda x, w, conv=conv: conv(x, w, 2)), (x1, w1),
            conv_flops(BATCH, 28, 28, 5, 1, 6)),
        "conv1_wgrad": (
            jax.jit(jax.grad(lambda w, x, conv=conv: jnp.sum(
                conv(x, w, 2) ** 2))), (w1, x1),
            2 * conv_flops(BATCH, 28, 28, 5, 1, 6)),
        "conv2_fwd": (
            jax.jit(lambda x, w, conv=conv: conv(x, w, 0)), (x2, w2),
            conv_flops(BATCH, 10, 10, 5, 6, 16)),
        "conv2_wgrad": (
            jax.jit(jax.grad(lambda w, x, conv=conv: jnp.sum(
                conv(x, w, 0) ** 2))), (w2, x2),
            2 * conv_flops(BATCH, 10, 10, 5, 6, 16)),
        "conv2_w_and_xgrad": (
            jax.jit(jax.grad(lambda w, x, conv=conv: jnp.sum(
                conv(x, w, 0) ** 2), argnums=(0, 1))), (w2, x2),
            3 * conv_flops(BATCH, 10, 10, 5, 6, 16)),
        "pool1_fwd": (jax.jit(pool), (p1,), 0.0),
        "pool1_fwd_bwd": (
            jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x) ** 2))),
            (p1,), 0.0),
        "dense1_fwd_bwd": (
            jax.jit(jax.grad(lambda w, x: jnp.sum((x @ w) ** 2),
                             argnums=(0, 1))), (wd1, d1),
            3 * 2.0 * BATCH * 400 * 120),
        "lenet_fwd": (jax.jit(lenet), (params, x1), _lenet_fwd_flops(BATCH)),
        "lenet_fwd_grad": (
            jax.jit(jax.grad(xent)), (params, x1, labels),
            3 * _lenet_fwd_flops(BATCH)),
    }
    res = {}
    for op, (fn, args, flops) in ops.items():
      med, best = _median_time(fn, args, runs)
      res[op] = {"median_s": med, "min_s": best}
      if flops:
        res[op]["gflops_per_s"] = flops / med / 1e9
    meta = jax.jit(jax.grad(meta_loss, argnums=(0, 1)))
    t0 = time.perf_counter()
    jax.block_until_ready(meta(distilled, lrs, params, x1, labels))
    compile_s = time.perf_counter() - t0
    med, best = _median_time(meta, (distilled, lrs, params, x1, labels),
                             meta_runs, warmup=1)
    res["meta_step"] = {"median_s": med, "min_s": best,
                        "first_call_s": compile_s}
    results[name] = res
    print(f"# {name}: meta-step {med:.4f}s", file=sys.stderr, flush=True)
  return results


def run_torch(runs, meta_runs):
  """Same per-op breakdown in PyTorch (CPU, 2 threads)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(2)
  torch.manual_seed(0)

  def timeit(fn):
    for _ in range(3):
      fn()
    ts = []
    for _ in range(runs):
      t0 = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(ts)), "min_s": float(np.min(ts))}

  x1 = torch.randn(BATCH, 1, 28, 28)
  w1 = (torch.randn(6, 1, 5, 5) * 0.2).requires_grad_()
  x2 = torch.randn(BATCH, 6, 14, 14)
  w2 = (torch.randn(16, 6, 5, 5) * 0.1).requires_grad_()
  x2g = x2.clone().requires_grad_()
  p1 = torch.randn(BATCH, 6, 28, 28).requires_grad_()
  d1 = torch.randn(BATCH, 400).requires_grad_()
  wd1 = (torch.randn(400, 120) * 0.05).requires_grad_()
  labels = torch.randint(0, 10, (BATCH,))
  shapes = [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]
  fan_in = [25, 150, 400, 120, 84]
  params = []
  for s, f in zip(shapes, fan_in):
    params += [(torch.randn(*s) / f ** 0.5).requires_grad_(),
               torch.zeros(s[0], requires_grad=True)]

  def lenet(p, x):
    x = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1], padding=2)), 2)
    x = F.max_pool2d(F.relu(F.conv2d(x, p[2], p[3])), 2)
    x = x.flatten(1)
    x = F.relu(F.linear(x, p[4], p[5]))
    x = F.relu(F.linear(x, p[6], p[7]))
    return F.linear(x, p[8], p[9])

  def grad(out, inputs, create_graph=False):
    return torch.autograd.grad(out, inputs, create_graph=create_graph)

  res = {}
  with torch.no_grad():
    res["conv1_fwd"] = timeit(lambda: F.conv2d(x1, w1, padding=2))
    res["conv2_fwd"] = timeit(lambda: F.conv2d(x2, w2))
    res["pool1_fwd"] = timeit(lambda: F.max_pool2d(p1, 2))
    res["lenet_fwd"] = timeit(lambda: lenet(params, x1))
  res["conv1_wgrad"] = timeit(
      lambda: grad((F.conv2d(x1, w1, padding=2) ** 2).sum(), [w1]))
  res["conv2_wgrad"] = timeit(lambda: grad((F.conv2d(x2, w2) ** 2).sum(), [w2]))
  res["conv2_w_and_xgrad"] = timeit(
      lambda: grad((F.conv2d(x2g, w2) ** 2).sum(), [w2, x2g]))
  res["pool1_fwd_bwd"] = timeit(
      lambda: grad((F.max_pool2d(p1, 2) ** 2).sum(), [p1]))
  res["dense1_fwd_bwd"] = timeit(lambda: grad(((d1 @ wd1) ** 2).sum(),
                                              [wd1, d1]))
  res["lenet_fwd_grad"] = timeit(
      lambda: grad(F.cross_entropy(lenet(params, x1), labels), params))

  distilled = torch.randn(STEPS, N_DISTILL, 1, 28, 28, requires_grad=True)
  lrs = torch.full((STEPS,), 0.02, requires_grad=True)
  d_labels = torch.arange(N_DISTILL) % 10

  def meta():
    p = list(params)
    for t in range(STEPS):
      loss = F.cross_entropy(lenet(p, distilled[t]), d_labels)
      g = grad(loss, p, create_graph=True)
      p = [a - lrs[t] * b for a, b in zip(p, g)]
    return grad(F.cross_entropy(lenet(p, x1), labels), [distilled, lrs])

  saved = runs
  runs = meta_runs
  res["meta_step"] = timeit(meta)
  runs = saved
  return {"torch": res}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impls", default="xla,fast",
                      help="comma list of " + ",".join(IMPLS))
  parser.add_argument("--runs", type=int, default=20)
  parser.add_argument("--meta_runs", type=int, default=10)
  parser.add_argument("--checkpoint", action="store_true",
                      help="jax.checkpoint the scan body")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--tune_malloc", action="store_true",
                      help="call layers.tune_cpu_malloc() first")
  parser.add_argument("--torch_only", action="store_true")
  args = parser.parse_args()

  out = {"config": {"batch": BATCH, "steps": STEPS, "n_distill": N_DISTILL,
                    "runs": args.runs, "meta_runs": args.meta_runs,
                    "checkpoint": args.checkpoint,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
         "results": {}}
  if not args.torch_only:
    if args.tune_malloc:
      from distill_jax.nn import layers  # pylint: disable=g-import-not-at-top
      out["config"]["tune_malloc"] = layers.tune_cpu_malloc()
    import jax  # pylint: disable=g-import-not-at-top
    out["config"]["jax"] = jax.__version__
    out["config"]["backend"] = jax.default_backend()
    out["results"].update(run_jax(args.impls.split(","), args.runs,
                                  args.meta_runs, args.checkpoint))
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print("# torch not importable; skipping", file=sys.stderr)
    else:
      out["results"].update(run_torch(args.runs, args.meta_runs))
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
