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

from distill_jax.run import storage
from distill_jax.run import viz

flags.DEFINE_list("runs", None, "run folders (each with report.json)")
flags.DEFINE_string("out", None, "output folder")
FLAGS = flags.FLAGS


def _acc(ev, key):
  a = ev.get(key, {}).get("test_acc")
  return (a["mean"], a["std"]) if a else None


def table(reports: list[dict]) -> str:
  """Markdown rows, one per run, plus the random-real row of the first."""
  def fmt(v):
    return "-" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"
  rows = ["| set | soft-label acc | hard-label acc | HLR / IOR / LRS | "
          "LRS (DD-Ranking % form) | image / label bytes | diversity | TD | "
          "synthesis s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    ev, rk = r["evaluation"], r["evaluation"].get("ranking", {})
    b = ev.get("bytes", {})
    rows.append(
        f"| {r['method']} | {fmt(_acc(ev, 'soft'))} | "
        f"{fmt(_acc(ev, 'hard'))} | {rk.get('hlr', float('nan')):.3f} / "
        f"{rk.get('ior', float('nan')):+.3f} / "
        f"{rk.get('lrs', float('nan')):.3f} | "
        f"{rk.get('dd_ranking_percent', {}).get('lrs', float('nan')):.3f} | "
        f"{b.get('images', 0)} / {b.get('soft_labels', 0)} | "
        f"{ev.get('diversity', float('nan')):.3f} | "
        f"{ev.get('td', float('nan')):.3f} | "
        f"{r.get('synthesis_time_s', 0):.0f} |")
  ev = reports[0]["evaluation"]
  rows.append(f"| random real | {fmt(_acc(ev, 'random_real_soft'))} | "
              f"{fmt(_acc(ev, 'random_real_hard'))} | | | | | | |")
  return "\n".join(rows) + "\n"


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
                       lambda f: f.write(table(reports)), mode="w")
  groups = {r["method"]: {k: v for k, v in (
      ("soft labels", _acc(r["evaluation"], "soft")),
      ("hard labels", _acc(r["evaluation"], "hard"))) if v}
            for r in reports}
  ev = reports[0]["evaluation"]
  groups["random real"] = {k: v for k, v in (
      ("soft labels", _acc(ev, "random_real_soft")),
      ("hard labels", _acc(ev, "random_real_hard"))) if v}
  viz.bar_plot(os.path.join(FLAGS.out, "comparison.png"), groups,
               ("soft labels", "hard labels"), "test accuracy (%)",
               f"{reports[0]['dataset']}, IPC {reports[0]['ipc']}")
  print(table(reports))


if __name__ == "__main__":
  flags.mark_flags_as_required(["runs", "out"])
  app.run(main)
