"""Sensitivity studies (paper Figures 4 and 5), random init, short budgets.

  * Fig. 4a: accuracy vs number of GD steps (--steps_list, 2 epochs, one
    image per class per step);
  * Fig. 4b: accuracy vs epochs (--epochs_list, --fig4b_steps steps);
  * Fig. 5: N images per class in ONE step vs N steps of one image per
    class (--images_list, 1 epoch).

Every point is a full `train.run` (random init) stopped after
--point_budget_s seconds (or --point_outer_steps), evaluated by replay on
--eval_inits held-out inits; identical configurations are run once.

Command (2-core CPU):

  python -m experiments.sensitivity --workdir=/tmp/sensitivity \
      --data_dir=../shared/datasets

Measured with --point_budget_s=0 --point_outer_steps=400 --eval_inits=20
(step counts make the points independent of machine load): 42 min of
wall-clock shared with other runs. Steps 1/2/4/10 (2 epochs): 18.9 / 32.0 /
45.0 / 63.7%; epochs 1/2/3/5 (10 steps): 52.0 / 63.7 / 74.9 / 78.0%; N
images per class in one step ~13% for every N vs N steps 12.3 / 17.2 / 31.1
/ 52.0% (docs/results/sensitivity.md). Short budgets understate all
points; the trends are the paper's. Outputs: WORKDIR/fig4a_steps.png,
fig4b_epochs.png, fig5_one_vs_many.png, sensitivity.json, points/<name>/.
"""

import dataclasses
import os


from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.run import storage
from distill_jax.run import train_dd as train
from distill_jax.run import viz
from experiments import common
from experiments import configs
from experiments import presets


SensitivityConfig = configs.SensitivityConfig
PRESETS = presets.SENSITIVITY
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


def points(cfg: SensitivityConfig) -> dict:
  """figure -> list of (x value, series, (steps, epochs, images/class))."""
  return {
      "fig4a": [(s, "2 epochs", (s, 2, 1)) for s in cfg.steps_list],
      "fig4b": [(e, f"{cfg.fig4b_steps} steps", (cfg.fig4b_steps, e, 1))
                for e in cfg.epochs_list],
      "fig5": ([(n, "one step", (1, 1, n)) for n in cfg.images_list] +
               [(n, "multiple steps", (n, 1, 1)) for n in cfg.images_list]),
  }


def run(cfg: SensitivityConfig, workdir: str, *, data_dir=None,
        show_progress: bool = True) -> dict:
  cfg.validate()
  ds = data.load(cfg.dataset, manual_dir=data_dir, val_size=cfg.val_size,
                 seed=cfg.seed, train_limit=cfg.train_limit or None)
  base = config_lib.DistillConfig(
      dataset=cfg.dataset, arch=cfg.arch, init_mode="random",
      real_batch=cfg.real_batch, lr_init=cfg.lr_init,
      outer_steps=cfg.point_outer_steps, time_budget_s=cfg.point_budget_s,
      eval_inits=cfg.eval_inits, val_inits=1, val_size=cfg.val_size,
      train_limit=cfg.train_limit, eval_batch=cfg.eval_batch, seed=cfg.seed,
      log_every=25)
  done = {}
  figures = {}
  for fig, pts in points(cfg).items():
    series = {}
    for xval, name, (steps, epochs, ipc) in pts:
      key = (steps, epochs, ipc)
      if key not in done:
        dcfg = dataclasses.replace(base, steps=steps, epochs=epochs,
                                   images_per_class_per_step=ipc).validate()
        tag = f"s{steps}_e{epochs}_ipc{ipc}"
        report = train.run(dcfg, os.path.join(workdir, "points", tag),
                           dataset=ds, show_progress=show_progress)
        done[key] = {"tag": tag, "test_acc": report["test_acc"],
                     "outer_steps": report["outer_steps"]}
        print(f"{tag}: {report['test_acc']['mean']:.2f} +- "
              f"{report['test_acc']['std']:.2f} % "
              f"({report['outer_steps']} outer steps)")
      series.setdefault(name, []).append((xval, done[key]))
    figures[fig] = series
  labels = {"fig4a": ("fig4a_steps.png", "number of GD steps"),
            "fig4b": ("fig4b_epochs.png", "number of epochs"),
            "fig5": ("fig5_one_vs_many.png", "images per class (N)")}
  for fig, series in figures.items():
    path, xlabel = labels[fig]
    viz.line_plot(
        os.path.join(workdir, path),
        {name: ([x for x, _ in pts], [p["test_acc"]["mean"] for _, p in pts],
                [p["test_acc"]["std"] for _, p in pts])
         for name, pts in series.items()},
        xlabel, "test accuracy (%)", f"{ds.name}, random init")
  out = {"config": dataclasses.asdict(cfg), "dataset": ds.name,
         "figures": {fig: {name: [{"x": x, **p} for x, p in pts]
                           for name, pts in series.items()}
                     for fig, series in figures.items()}}
  storage.write_json(os.path.join(workdir, "sensitivity.json"), out)
  return {"points": len(done),
          "plots": [os.path.join(workdir, p) for p, _ in labels.values()]}


main = common.config_main(PRESETS, SensitivityConfig, run)


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=SensitivityConfig)
  common.run(main)
