"""RaT-BPTT on Fashion-MNIST (ConvNet-3 w128, instance norm, PyTorch init).

Command (2-core CPU; data from ../shared/datasets or Debian's package):

  python -m experiments.rat_bptt_fashion --workdir=/tmp/rat_fashion_ipc1 \
      --data_dir=../shared/datasets --preset=cpu_ipc1

  python -m experiments.rat_bptt_fashion --workdir=/tmp/rat_fashion_ipc10 \
      --data_dir=../shared/datasets --preset=cpu_ipc10

Presets:
  * cpu_ipc1 (default): 1 image/class, N=60 inner steps, random window M=20,
    SGD momentum 0.9 lr 0.01 (the setting of the PyTorch reference run in
    PERFORMANCE.md: 1.36 s/step, 75.7-76.0% after 300 steps with its own
    test-selected eval), flip/rotate, real batch 200, 300 outer steps (capped
    at 40 min), candidates every 100 steps on 2 validation nets, final eval 8
    nets at 300/600/1000 steps. Measured: 70.71 +- 0.87% test (8 nets;
    validation-selected budget 1000, checkpoint 300); 30 min of
    distillation sharing the 2 cores with other jobs (the same-cost
    fixed-window run: 4.4 s per outer step on one core, candidate
    evaluations included) + 9-11 min of evaluation. With an hour on one
    core instead (--outer_steps=3000 --time_budget_s=3600, session 8): 951
    outer steps, 76.38 +- 0.38% (validation still rising); outer lr 1e-3
    was chosen on validation over 1e-2 (72.2 vs 68.4 at 300 steps).
  * cpu_ipc10: 10 images/class, 2 per class per inner step, otherwise as
    cpu_ipc1. Measured 2026-11-22 on one core (`taskset -c 1`): 33 min of
    distillation (6.6 s per outer step with candidate evaluations) + 12.5
    min of evaluation (with the evaluation of before session 6; it now runs
    one network at a time, about 2x faster): 76.48 +- 0.31% test over 8
    nets (validation-selected budget
    300, checkpoint 300, the last: still improving). Target 88.5% (best
    published): 12 points short at this budget.
  * gpu_ipc1 / gpu_ipc10: the CIFAR recipe of B.8 transferred (Adam 1e-3,
    N=200, M=60, real batch 5000 for ipc10, 12k outer steps, full eval
    budgets 300/600/1000/3000); hours on a GPU.
  * smoke: seconds, for tests.

Outputs in --workdir: config.json, metrics.jsonl, checkpoints/, distilled.npz,
images/, report.json (test mean +- std at the validation-selected budget).
"""

from absl import app

from distill_jax import rat_bptt
from distill_jax import rat_train
from experiments import common


def cpu(dataset: str, ipc: int, digits: bool = False) -> rat_bptt.RatConfig:
  """The <= 1 hour CPU preset shared by the MNIST-type experiments."""
  aug = "rotate" if digits else "flip_rotate"
  return rat_bptt.RatConfig(
      dataset=dataset, ipc=ipc, batch_per_class=1 if ipc == 1 else 2,
      total_steps=60, window=20, truncation="random", inner_opt="sgd",
      inner_lr=0.01, inner_momentum=0.9, syn_aug=aug, real_aug=aug,
      real_batch=200, outer_lr=1e-3, outer_steps=300, time_budget_s=2400.0,
      eval_budgets=(300, 600, 1000), eval_nets=8, eval_every=100,
      val_nets=2, val_size=5000, log_every=10, checkpoint_every=50)


def gpu(dataset: str, ipc: int, digits: bool = False) -> rat_bptt.RatConfig:
  """B.8's CIFAR-10 recipe on a 28x28 dataset (GPU scale)."""
  aug = "rotate" if digits else "flip_rotate"
  return rat_bptt.RatConfig(
      dataset=dataset, ipc=ipc, batch_per_class=ipc, total_steps=200,
      window=60, truncation="random", inner_opt="adam", inner_lr=1e-3,
      syn_aug=aug, real_aug=aug, real_batch=5000 if ipc > 1 else 1000,
      outer_steps=12000, eval_every=500, val_nets=4, checkpoint_every=500)


def smoke(dataset: str, digits: bool = False) -> rat_bptt.RatConfig:
  aug = "rotate" if digits else "flip_rotate"
  return rat_bptt.RatConfig(
      dataset=dataset, arch="mlp", mlp_hidden=(16,), ipc=1, total_steps=4,
      window=2, syn_aug=aug, real_aug=aug, real_batch=32, outer_steps=2,
      eval_budgets=(3, 6), eval_nets=2, val_nets=1, eval_every=1,
      train_limit=200, val_size=50, log_every=1, checkpoint_every=1)


def preset(name: str = "cpu_ipc1") -> rat_bptt.RatConfig:
  if name == "cpu_ipc1":
    return cpu("fashion_mnist", 1)
  if name == "cpu_ipc10":
    return cpu("fashion_mnist", 10)
  if name == "gpu_ipc1":
    return gpu("fashion_mnist", 1)
  if name == "gpu_ipc10":
    return gpu("fashion_mnist", 10)
  if name == "smoke":
    return smoke("fashion_mnist")
  raise ValueError(f"Unknown preset {name!r}.")


def make_main(presets: dict, run_fn, extra_kwargs=dict,
              keep_mapped: bool = False):
  """An absl main running `run_fn(cfg, workdir, ...)` on the flag config;
  `extra_kwargs()` (called after flag parsing) adds experiment flags;
  `keep_mapped` keeps large malloc blocks mapped (`common.run_and_report`)."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cfg = common.config_from_flags(presets, cfg_cls=rat_bptt.RatConfig)
    # One malloc arena: RaT-BPTT jobs' peak memory 677 -> 594 MiB at the
    # same step time (BUILD.md, Benchmarks).
    common.run_and_report(run_fn, cfg, common.FLAGS.workdir, malloc_arenas=1,
                          keep_mapped=keep_mapped,
                          data_dir=common.FLAGS.data_dir,
                          resume=common.FLAGS.resume,
                          show_progress=common.FLAGS.progress,
                          **extra_kwargs())
  return main


def define_flags(presets: dict, default: str) -> None:
  common.define_flags(presets, default, cfg_cls=rat_bptt.RatConfig)


NAMES = ("cpu_ipc1", "cpu_ipc10", "gpu_ipc1", "gpu_ipc10", "smoke")
PRESETS = {n: (lambda n=n: preset(n)) for n in NAMES}
main = make_main(PRESETS, rat_train.run)


if __name__ == "__main__":
  define_flags(PRESETS, "cpu_ipc1")
  app.run(main)
