"""PyTorch re-creation of one SRe2L recover iteration, timed on this machine.

Seconds from two machines do not compare (see `torch_step.py`), so this
script rebuilds the released SRe2L recover loop (METHODS.md C.0, C.1;
`SRe2L/recover/data_synthesis.py`, `utils.py::BNFeatureHook`) in plain
PyTorch, at the shapes of `recover_step.py`'s SRe2L configurations, to be
run beside it in one sitting:

  * teacher: ConvNet-BN (conv 3x3 w64 with bias -> BatchNorm2d -> ReLU ->
    avg-pool 2, x3; padding 3 on the first conv for 28x28x1 inputs, 1
    otherwise; linear head), randomly initialised, in eval mode, parameters
    frozen; a forward hook on every BatchNorm2d reads its input's mean and
    biased variance over (N, H, W) and stores
    ||mu - mu_BN||_2 + ||var - var_BN||_2 (`BNFeatureHook`);
  * loss = CE + r_bn * sum_l w_l * hook_l, w_1 = 10 (first BN), w_l = 1;
  * augmentation drawn once per batch, on the 4-D batch tensor:
    RandomResizedCrop(H, scale (min_scale, 1)) (torchvision's, or, when
    torchvision cannot be imported, the same operations: its box sampler,
    a slice and `F.interpolate(bilinear, antialias=True)`), a horizontal
    flip with p = 0.5 where the preset flips, `torch.roll` by
    randint(0, jitter) pixels on both axes;
  * Adam (0.5, 0.9), eps 1e-8, lr by the cosine policy
    (`lr_cosine_policy(lr, 0, iterations)`), set every iteration; pixels
    clamped per channel to [-m/s, (1 - m)/s] after each step.
Random images of the right shapes; cost does not depend on the weights.

The released code recovers one batch (10 images, one per class, here) for
all its iterations, then the next: a run is IPC x iterations batch
iterations. `batch_median_s` is one batch iteration; `median_s` =
IPC x `batch_median_s` is the unit of `recover_step.py` (one iteration
over all C x IPC images). Needs `pip install torch` (torchvision optional;
neither is a dependency of distill_jax):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch torchvision \
      --index-url https://download.pytorch.org/whl/cpu
  /tmp/torchvenv/bin/python benchmarks/torch_recover_step.py --runs=50 \
      --compare=/tmp/recover_step.json --out=/tmp/torch_recover_step.json

Other work on the cores: PyTorch's OpenMP threads spin at every barrier, and
with another process on one of the two cores a batch iteration took ~20x
longer (0.6 s instead of 0.03 s); `OMP_WAIT_POLICY=PASSIVE` (set before
Python starts) removed that. Time both libraries on an idle machine; on a
busy one, set it and read `load_avg_1m_before` of both outputs.

Reported per configuration: median / min seconds per batch iteration and
per iteration over all images, iterations per second, the estimated
seconds of the whole recover run (iterations x median_s), the first
(warm-up) iteration, process peak RSS, torch.get_num_threads(); with
`--compare` the JAX figures of the same configuration and
`torch_over_jax` (median over median: > 1 means distill_jax is faster).
"""

import argparse
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time

_FASHION = dict(shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,), flip=False,
                jitter=2)
_CIFAR10 = dict(shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465),
                std=(0.247, 0.243, 0.261), flip=True, jitter=4)
_RECIPE = dict(width=64, depth=3, batch_size=10, lr=0.25, r_bn=0.01,
               first_bn_multiplier=10.0, crop=True, min_scale=0.25)
# The SRe2L configurations of recover_step.py (the CPU presets).
CONFIGS = {
    "fashion_sre2l_ipc10": {**_RECIPE, **_FASHION, "ipc": 10,
                            "iterations": 1000},
    "fashion_sre2l_ipc50": {**_RECIPE, **_FASHION, "ipc": 50,
                            "iterations": 800},
    "cifar10_sre2l_ipc10": {**_RECIPE, **_CIFAR10, "ipc": 10,
                            "iterations": 1000},
}


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    sys.exit(f"torch_recover_step.py needs PyTorch ({e}); install it in a "
             "separate environment, e.g. `python3 -m venv /tmp/torchvenv "
             "&& /tmp/torchvenv/bin/pip install torch torchvision "
             "--index-url https://download.pytorch.org/whl/cpu` (or `pip "
             "install torch`; not a dependency of distill_jax).")
  return torch


def _import_rrc():
  """torchvision's RandomResizedCrop class, or None if it cannot load."""
  try:
    from torchvision import transforms  # pylint: disable=g-import-not-at-top
  except Exception:  # pylint: disable=broad-except
    # ImportError, or the RuntimeError of a torchvision build that does not
    # match torch (e.g. a CUDA torchvision wheel beside a CPU torch).
    return None
  return transforms.RandomResizedCrop


def rrc_params(h: int, w: int, scale, ratio, rand, randint):
  """torchvision's `RandomResizedCrop.get_params`: (top, left, hh, ww)."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * (scale[0] + (scale[1] - scale[0]) * rand())
    aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * rand())
    ww = int(round(math.sqrt(target * aspect)))
    hh = int(round(math.sqrt(target / aspect)))
    if 0 < ww <= w and 0 < hh <= h:
      return randint(0, h - hh), randint(0, w - ww), hh, ww
  in_ratio = w / h
  if in_ratio < min(ratio):
    ww, hh = w, int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    hh, ww = h, int(round(h * max(ratio)))
  else:
    ww, hh = w, h
  return (h - hh) // 2, (w - ww) // 2, hh, ww


def make_teacher(torch, cfg):
  """ConvNet-BN as recover_step.py's teacher (stat_models convnet_bn)."""
  nn = torch.nn
  c, h, _ = cfg["shape"]
  first_pad = 3 if tuple(cfg["shape"]) == (1, 28, 28) else 1
  width, layers, cin = cfg["width"], [], c
  size = h + 2 * first_pad - 2  # later 3x3 convs (padding 1) keep it.
  for d in range(cfg["depth"]):
    layers += [nn.Conv2d(cin, width, 3, padding=first_pad if d == 0 else 1),
               nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AvgPool2d(2)]
    cin, size = width, size // 2
  return nn.Sequential(*layers, nn.Flatten(),
                       nn.Linear(width * size * size, 10))


class BNFeatureHook:
  """SRe2L's hook: the BN input's moments against the running ones."""

  def __init__(self, module):
    self.r_feature = None
    self.hook = module.register_forward_hook(self.hook_fn)

  def hook_fn(self, module, inputs, output):
    del output
    x = inputs[0]
    nch = x.shape[1]
    mean = x.mean([0, 2, 3])
    var = x.permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(
        1, unbiased=False)
    self.r_feature = ((module.running_var.data - var).norm(2) +
                      (module.running_mean.data - mean).norm(2))


def measure(name: str, runs: int, seed: int, threads: int,
            warmup: int = 2) -> dict:
  """Times `runs` batch iterations of configuration `name`."""
  load = os.getloadavg()[0]  # other work on the cores skews the timing.
  torch = _import_torch()
  torch.set_num_threads(threads)
  fn = torch.nn.functional
  cfg = CONFIGS[name]
  c, h, w = cfg["shape"]
  torch.manual_seed(seed)
  rng = random.Random(seed)
  teacher = make_teacher(torch, cfg)
  teacher.eval()
  for p in teacher.parameters():
    p.requires_grad = False
  hooks = [BNFeatureHook(m) for m in teacher.modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
  rescale = [cfg["first_bn_multiplier"]] + [1.0] * (len(hooks) - 1)
  rrc_cls = _import_rrc()
  scale, ratio = (cfg["min_scale"], 1.0), (3 / 4, 4 / 3)
  if rrc_cls is not None:
    rrc = rrc_cls((h, w), scale=scale, ratio=ratio, antialias=True)
  else:
    def rrc(x):
      top, left, hh, ww = rrc_params(
          h, w, scale, ratio, lambda: float(torch.rand(1)),
          lambda lo, hi: int(torch.randint(lo, hi + 1, (1,))))
      return fn.interpolate(x[..., top:top + hh, left:left + ww],
                            size=(h, w), mode="bilinear",
                            align_corners=False, antialias=True)

  def augment(x):
    if cfg["crop"]:
      x = rrc(x)
    if cfg["flip"] and torch.rand(1) < 0.5:  # RandomHorizontalFlip(0.5)
      x = torch.flip(x, dims=[-1])
    if cfg["jitter"]:
      off1, off2 = (rng.randint(0, cfg["jitter"]),
                    rng.randint(0, cfg["jitter"]))
      x = torch.roll(x, shifts=(off1, off2), dims=(2, 3))
    return x

  lo = [-m / s for m, s in zip(cfg["mean"], cfg["std"])]
  hi = [(1 - m) / s for m, s in zip(cfg["mean"], cfg["std"])]

  def clip(x):
    for ch in range(c):
      x[:, ch] = torch.clamp(x[:, ch], lo[ch], hi[ch])
    return x

  iterations, base_lr = cfg["iterations"], cfg["lr"]
  targets = torch.arange(cfg["batch_size"]) % 10
  inputs = torch.randn((cfg["batch_size"], c, h, w), requires_grad=True)
  optimizer = torch.optim.Adam([inputs], lr=base_lr, betas=[0.5, 0.9],
                               eps=1e-8)
  criterion = torch.nn.CrossEntropyLoss()

  def iteration(it):
    lr = 0.5 * (1 + math.cos(math.pi * it / iterations)) * base_lr
    for group in optimizer.param_groups:
      group["lr"] = lr
    inputs_jit = augment(inputs)
    optimizer.zero_grad()
    outputs = teacher(inputs_jit)
    loss_ce = criterion(outputs, targets)
    loss_bn = sum(mod.r_feature * rescale[i] for i, mod in enumerate(hooks))
    loss = loss_ce + cfg["r_bn"] * loss_bn
    loss.backward()
    optimizer.step()
    inputs.data = clip(inputs.data)
    return float(loss.detach())

  t = time.perf_counter()
  iteration(0)
  first_s = time.perf_counter() - t
  for it in range(1, warmup):
    iteration(it)
  times = []
  for it in range(warmup, warmup + runs):
    t = time.perf_counter()
    loss = iteration(it % iterations)
    times.append(time.perf_counter() - t)
  med, ipc = statistics.median(times), cfg["ipc"]
  return {"name": name, **{k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in cfg.items()},
          "batches": ipc, "batch_median_s": round(med, 5),
          "batch_min_s": round(min(times), 5),
          "median_s": round(ipc * med, 5), "min_s": round(ipc * min(times), 5),
          "iters_per_s": round(1.0 / (ipc * med), 2),
          "run_estimate_s": round(iterations * ipc * med, 1),
          "first_iter_s": round(first_s, 4),
          "peak_rss_mib": round(
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          "rrc": "torchvision" if rrc_cls is not None else "re-created",
          "loss": loss, "threads": torch.get_num_threads(),
          "load_avg_1m_before": round(load, 2),
          "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
          "torch": torch.__version__}


def compare(result: dict, jax_json: str) -> dict:
  """Adds the JAX figures of the same configuration and the ratio."""
  with open(jax_json) as f:
    by = {r["name"]: r for r in json.load(f).get("results", [])
          if "error" not in r}
  j = by.get(result["name"])
  if j is None:
    return result
  return {**result, "jax_median_s": j["median_s"],
          "jax_peak_rss_mib": j["peak_rss_mib"],
          "torch_over_jax": round(result["median_s"] / j["median_s"], 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=",".join(CONFIGS),
                      help=f"comma-separated subset of {sorted(CONFIGS)}")
  parser.add_argument("--runs", type=int, default=50,
                      help="timed batch iterations per configuration")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threads", type=int, default=2,
                      help="torch.set_num_threads")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--compare", default="",
                      help="recover_step.py's JSON from the same sitting: "
                           "adds torch_over_jax per configuration")
  parser.add_argument("--out", default=os.path.join(
      tempfile.gettempdir(), "torch_recover_step.json"))
  args = parser.parse_args()
  names = [s for s in args.only.split(",") if s]
  unknown = sorted(set(names) - set(CONFIGS))
  if unknown:
    parser.error(f"--only: unknown configurations {unknown}; choose from "
                 f"{sorted(CONFIGS)}")
  if args.runs < 1 or args.warmup < 1:
    parser.error("--runs and --warmup must be at least 1")
  _import_torch()
  results = []
  for name in names:
    r = measure(name, args.runs, args.seed, args.threads, args.warmup)
    if args.compare:
      r = compare(r, args.compare)
    print(json.dumps(r), flush=True)
    results.append(r)
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"results": results}, f, indent=1)
  os.replace(tmp, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
