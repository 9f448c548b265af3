"""The comparison table and plot of several runs' `report.json`.

Library side of `python -m experiments.decoupled_table`: notebooks and
scripts call `table` and `plot` on the reports that `train_decoupled.run`
or the fair evaluation return.
"""

from distill_jax.run import viz


def _acc(ev: dict, key: str):
  a = ev.get(key, {}).get("test_acc")
  return (a["mean"], a["std"]) if a else None


def _fmt(v) -> str:
  return "-" if v is None else f"{v[0]:.2f} ± {v[1]:.2f}"


def table(reports: list[dict]) -> str:
  """Markdown rows, one per run, plus the random-real row of the first."""
  rows = ["| set | soft-label acc | hard-label acc | HLR / IOR / LRS | "
          "LRS (DD-Ranking % form) | image / label bytes | diversity | TD | "
          "synthesis s |", "|---|---|---|---|---|---|---|---|---|"]
  nan = float("nan")
  for r in reports:
    ev, rk = r["evaluation"], r["evaluation"].get("ranking", {})
    b = ev.get("bytes", {})
    rows.append(
        f"| {r['method']} | {_fmt(_acc(ev, 'soft'))} | "
        f"{_fmt(_acc(ev, 'hard'))} | {rk.get('hlr', nan):.3f} / "
        f"{rk.get('ior', nan):+.3f} / {rk.get('lrs', nan):.3f} | "
        f"{rk.get('dd_ranking_percent', {}).get('lrs', nan):.3f} | "
        f"{b.get('images', 0)} / {b.get('soft_labels', 0)} | "
        f"{ev.get('diversity', nan):.3f} | {ev.get('td', nan):.3f} | "
        f"{r.get('synthesis_time_s', 0):.0f} |")
  ev = reports[0]["evaluation"]
  rows.append(f"| random real | {_fmt(_acc(ev, 'random_real_soft'))} | "
              f"{_fmt(_acc(ev, 'random_real_hard'))} | | | | | | |")
  return "\n".join(rows) + "\n"


def _groups(ev: dict, soft: str, hard: str) -> dict:
  return {k: v for k, v in (("soft labels", _acc(ev, soft)),
                            ("hard labels", _acc(ev, hard))) if v}


def plot(reports: list[dict], path: str) -> None:
  """A bar plot of soft- and hard-label accuracy per run, plus random real."""
  groups = {r["method"]: _groups(r["evaluation"], "soft", "hard")
            for r in reports}
  groups["random real"] = _groups(reports[0]["evaluation"],
                                  "random_real_soft", "random_real_hard")
  viz.bar_plot(path, groups, ("soft labels", "hard labels"),
               "test accuracy (%)",
               f"{reports[0]['dataset']}, IPC {reports[0]['ipc']}")
