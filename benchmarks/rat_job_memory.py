"""Peak memory of a whole RaT-BPTT command-line job (data, compile, eval).

`rat_bptt_step.py` measures the outer step alone on random data; this runs
the real entry point on full Fashion-MNIST from disk in the PyTorch
reference's setting (ConvNet-3 w128 instance norm, IPC 1, N = M = 20,
SGD momentum 0.9 lr 0.01, flip/rotate, real batch 200, 1 init) for a few
outer steps plus one validation candidate and the final evaluation, and
reports the child process's peak RSS (reference: 2.3 GiB for the whole
PyTorch process).

  python benchmarks/rat_job_memory.py --data_dir=../shared/datasets \\
      --out=/tmp/rat_job_memory.json [--xla_defaults]

`--xla_defaults` compiles with XLA's default options (the entry point's
`--xla_cpu_defaults`) for comparison. `--preset_eval` keeps the
preset's evaluation instead of the minimal one: validation candidates on 2
networks every 5 outer steps and the final evaluation of 8 networks trained
for 300/600/1000 steps (what a full run adds on top of its outer steps;
19 minutes when two such jobs shared one core; not timed alone).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_GIB = 2.3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.path.join(
      ROOT, "..", "shared", "datasets"))
  parser.add_argument("--out", default="rat_job_memory.json")
  parser.add_argument("--outer_steps", type=int, default=10)
  parser.add_argument("--xla_defaults", action="store_true")
  parser.add_argument("--preset_eval", action="store_true")
  args = parser.parse_args()
  flags = ["--preset=cpu_ipc1", "--total_steps=20", "--window=20",
           "--truncation=full", f"--outer_steps={args.outer_steps}",
           "--eval_every=0", "--eval_budgets=20", "--eval_nets=1",
           "--val_nets=1", "--progress=false"]
  if args.xla_defaults:
    flags.append("--xla_cpu_defaults")
  if args.preset_eval:
    flags = [f for f in flags if f.split("=")[0] not in (
        "--eval_every", "--eval_budgets", "--eval_nets", "--val_nets")]
    flags += ["--eval_every=5"]
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.rat_bptt_fashion",
         f"--workdir={workdir}", f"--data_dir={args.data_dir}", *flags],
        cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
      sys.exit(f"The job failed (exit {proc.returncode}):\n"
               f"{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "report.json")) as f:
      report = json.load(f)
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  out = {"command": ["experiments.rat_bptt_fashion", *flags],
         "xla_defaults": args.xla_defaults,
         "preset_eval": args.preset_eval, "wall_s": round(wall, 1),
         "peak_rss_mib": round(peak, 1),
         "over_reference": round(peak / 1024 / REFERENCE_GIB, 2),
         "outer_steps": report["outer_steps"],
         "test_acc_mean": report["test_acc"]["mean"]}
  with open(args.out + ".tmp", "w") as f:
    json.dump(out, f, indent=1)
  os.replace(args.out + ".tmp", args.out)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
