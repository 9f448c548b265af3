"""Boost-DD (our reading, METHODS.md B.10) on Fashion-MNIST: nested sets.

Blocks of `ipc` images per class are distilled one after another with
RaT-BPTT. `--boost_mode=frozen` (default): earlier blocks stay fixed in the
inner training with loss weight `boost_beta`; `--boost_mode=slow`: earlier
blocks keep being learned with their outer update scaled by `boost_beta`.
Every prefix budget (1..boost_blocks blocks) is evaluated with the
validation-selected RaT-BPTT protocol.

Command (2-core CPU; slow with beta 0.01 is the reading the intercorrelation
study selected on validation, docs/results/intercorrelation.md):

  python -m experiments.boost_dd --workdir=/tmp/boost_fashion \
      --data_dir=../shared/datasets --preset=cpu --boost_mode=slow \
      --boost_beta=0.01

Presets:
  * cpu (default): 5 blocks of 1 image/class, beta 0.1, each block 150 outer
    steps of the cpu_ipc1 RaT-BPTT setting (N=60, M=20, SGD-m 0.01) capped
    at 10 min, 8 eval nets per prefix at 300/600/1000 steps. Estimated
    about 75-90 min. Expected: budget 1 like RaT-BPTT IPC1 (about 70%),
    rising with each block (not run at this width; at width 32 the
    intercorrelation study measured slow/0.01 prefixes 73.3 / 74.2 / 74.8 /
    75.4 at 1 / 2 / 5 / 10 images per class).
  * smoke: seconds, for tests.
"""

from distill_jax.methods import rat_bptt
from distill_jax.run import train_boost as boost
from experiments import common
from experiments import presets

PRESETS = presets.BOOST_DD
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).
main = common.rat_main(PRESETS, boost.run)

if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=rat_bptt.RatConfig)
  common.run(main)
