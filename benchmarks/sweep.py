"""Shared driver of the benchmark scripts: one process per configuration.

Each benchmark module defines `configs(runs, quick) -> list[dict]` (every
dict has a unique "name"), `measure(spec) -> dict` and a `summarize(by_name)
-> dict`; `main` parses the common flags, runs every selected configuration
in a fresh interpreter (so peak RSS is its own), prints one JSON line per
configuration and writes `{"results": [...], "summary": {...}}` atomically.
"""

import argparse
import json
import os
import subprocess
import sys
from typing import Callable


def main(script: str, doc: str, default_out: str, default_runs: int,
         configs: Callable[[int, bool], list], measure: Callable[[dict], dict],
         summarize: Callable[[dict], dict]) -> None:
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--out", default=default_out)
  parser.add_argument("--runs", type=int, default=default_runs)
  parser.add_argument("--quick", action="store_true",
                      help="fewer configurations (CI-sized)")
  parser.add_argument("--only", default="",
                      help="comma-separated configuration names to run; "
                           "default all")
  parser.add_argument("--single", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.single:
    print(json.dumps(measure(json.loads(args.single))))
    return
  specs = configs(args.runs, args.quick)
  names = set(filter(None, args.only.split(",")))
  unknown = names - {s["name"] for s in specs}
  if unknown:
    parser.error(f"--only: unknown configurations {sorted(unknown)}; "
                 f"choose from {[s['name'] for s in specs]}")
  machine = machine_info()
  print(json.dumps({"machine": machine}), flush=True)
  results = []
  for spec in specs:
    if names and spec["name"] not in names:
      continue
    proc = subprocess.run(
        [sys.executable, script, "--single", json.dumps(spec)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      results.append({**spec, "error": proc.stderr[-2000:]})
    else:
      results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(results[-1]), flush=True)
  for r in results:
    if "gflops_per_s" in r and machine["matmul_gflops"] > 0:
      r["fraction_of_peak"] = round(
          r["gflops_per_s"] / machine["matmul_gflops"], 3)
  by = {r["name"]: r for r in results if "error" not in r}
  out = {"machine": machine, "results": results, "summary": summarize(by)}
  with open(args.out + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(json.dumps(out["summary"]))


def machine_info(size: int = 2048, reps: int = 5) -> dict:
  """The CPU and its measured float32 ceiling, recorded with every sweep.

  Machines of one kind differ (AVX-512 with ~430 GFLOP/s on
  a large f32 matmul, or AVX2 with ~100): seconds from two machines do not
  compare, and GFLOP/s only means something beside this ceiling. The ceiling
  is the best of `reps` jitted `size` x `size` matmuls in this process.
  """
  import time  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model, flags = "unknown", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
  except OSError:
    pass
  a = jnp.ones((size, size), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  mm(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return {"cpu": model, "cores": os.cpu_count(),
          "simd": [f for f in ("avx512f", "avx2", "avx") if f in flags][:1],
          "matmul_gflops": round(2 * size**3 / best / 1e9, 1),
          "backend": jax.default_backend()}


def xla_flops(fn, *args) -> float:
  """XLA's FLOP count of `jax.jit(fn)(*args)` (a loop body counts once)."""
  import jax  # pylint: disable=g-import-not-at-top
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")
