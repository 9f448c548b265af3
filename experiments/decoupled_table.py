"""The comparison table and plot of several decoupled (or fair_eval) runs.

  python -m experiments.decoupled_table --runs=W1,W2,W3 --out=DIR

Reads each run's report.json and writes DIR/table.md (soft- and hard-label
accuracy, random real under the same protocol, HLR/IOR/LRS, bytes,
diversity, TD, times) and DIR/comparison.png.
"""

import json
import os

from absl import app
from absl import flags

from distill_jax.run import compare
from distill_jax.run import storage

flags.DEFINE_list("runs", None, "run folders (each with report.json)")
flags.DEFINE_string("out", None, "output folder")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  reports = []
  for wd in FLAGS.runs:
    path = os.path.join(wd, "report.json")
    if not os.path.exists(path):
      raise SystemExit(f"error: {path}: no report.json; run the experiment "
                       "first.")
    with open(path) as f:
      reports.append(json.load(f))
  os.makedirs(FLAGS.out, exist_ok=True)
  storage.atomic_write(os.path.join(FLAGS.out, "table.md"),
                       lambda f: f.write(compare.table(reports)), mode="w")
  compare.plot(reports, os.path.join(FLAGS.out, "comparison.png"))
  print(compare.table(reports))


if __name__ == "__main__":
  flags.mark_flags_as_required(["runs", "out"])
  app.run(main)
