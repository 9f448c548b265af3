"""RaT-BPTT on MNIST (ConvNet-3 w128; rotation only: flips change digits).

Command (2-core CPU; MNIST from ../shared/datasets):

  python -m experiments.rat_bptt_mnist --workdir=/tmp/rat_mnist_ipc1 \
      --data_dir=../shared/datasets --preset=cpu_ipc1

  python -m experiments.rat_bptt_mnist --workdir=/tmp/rat_mnist_ipc10 \
      --data_dir=../shared/datasets --preset=cpu_ipc10

Presets (see experiments/rat_bptt_fashion.py for the shared settings):
  * cpu_ipc1 (default): N=60, M=20 random, SGD-m 0.01, real batch 200, 300
    outer steps (capped at 40 min), 8 eval nets at 300/600/1000 steps.
    Measured on one core (`taskset -c 1`, another job on the
    other): 17 min of distillation (3.4 s per outer step with candidate
    evaluations) + 5 min of evaluation: 85.97 +- 0.90% test over 8 nets
    (validation-selected budget 1000, checkpoint 300, the last: still
    improving). RaT-BPTT reports no MNIST numbers (DC/MTT/FRePo: 91-93%).
  * cpu_ipc10: measured on one core (`taskset -c 1`, other work
    on the other core): 30 min of distillation (6.1 s per outer step with
    candidate evaluations) + 9 min of evaluation: 91.94 +- 0.40% test over
    8 nets (validation-selected budget 300, checkpoint 300, the last).
  * gpu_ipc1 / gpu_ipc10: B.8's CIFAR-10 recipe (Adam, N=200, M=60).
  * smoke: seconds, for tests.
"""

from distill_jax.methods import rat_bptt
from distill_jax.run import train_rat as rat_train
from experiments import common
from experiments import presets

PRESETS = presets.RAT_BPTT_MNIST
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).
main = common.rat_main(PRESETS, rat_train.run)

if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=rat_bptt.RatConfig)
  common.run(main)
