"""Old against new: one benchmark of two source trees, interleaved.

Runs `benchmarks/<bench>.py --only=<config>` of tree A and of tree B in
alternation (A B A B ...), each round a fresh process, so both see the same
machine state, and reports the per-round step times, their medians and the
ratio B / A as JSON. Each tree runs its own copy of the benchmark script
against its own `distill_jax` (PYTHONPATH is set to the tree).

  python benchmarks/ab.py --a=/path/to/old_checkout --b=. \
      --bench=meta_step --only=inits_1 --rounds=3 --out=/tmp/ab_meta.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_once(tree: str, bench: str, only: str, runs: int) -> dict:
  """One benchmark process of `tree`; returns its record for `only`."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "out.json")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, os.path.join(tree, "benchmarks", f"{bench}.py"),
           f"--only={only}", f"--out={out}", f"--runs={runs}"]
    subprocess.run(cmd, cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
      results = json.load(f)
  records = results.get("results", results)
  if isinstance(records, dict):
    records = list(records.values())
  for r in records:
    if isinstance(r, dict) and r.get("name") == only:
      if "error" in r:
        raise SystemExit(f"error: {cmd} failed:\n{r['error']}")
      return r
  raise SystemExit(f"error: {cmd} wrote no result named {only!r}.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--a", required=True, help="baseline source tree")
  parser.add_argument("--b", required=True, help="candidate source tree")
  parser.add_argument("--bench", required=True,
                      help="benchmark module in benchmarks/, e.g. meta_step")
  parser.add_argument("--only", required=True, help="its configuration")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--runs", type=int, default=10,
                      help="timed steps per process")
  parser.add_argument("--out", default="ab.json")
  args = parser.parse_args()
  per = {"a": [], "b": []}
  for _ in range(args.rounds):
    for side in ("a", "b"):
      per[side].append(run_once(getattr(args, side), args.bench, args.only,
                                args.runs))
  med = {s: statistics.median(r["median_s"] for r in per[s]) for s in per}
  report = {
      "bench": args.bench, "only": args.only, "rounds": args.rounds,
      "a": os.path.abspath(args.a), "b": os.path.abspath(args.b),
      "median_s": med, "ratio_b_over_a": round(med["b"] / med["a"], 3),
      "per_round_median_s": {s: [r["median_s"] for r in per[s]] for s in per},
      "peak_rss_mib": {s: [r.get("peak_rss_mib") for r in per[s]]
                       for s in per},
  }
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({k: report[k] for k in ("bench", "only", "median_s",
                                           "ratio_b_over_a")}))


if __name__ == "__main__":
  main()
