"""Dataset Distillation on Fashion-MNIST, random init, LeNet defaults.

The same-budget comparison of docs/results/dd_fashion_mnist.md: the DD
reference implementation reaches 63.1 +- 2.6% (10 random-init networks)
after 2,360 outer steps, 10 minutes on a 2-core CPU. The default preset
stops after 10 minutes of wall-clock (compilation included) and evaluates
200 held-out random inits.

Command (2-core CPU; Fashion-MNIST from ../shared/datasets or Debian's
`dataset-fashion-mnist` package):

  python -m experiments.dd_fashion_mnist --workdir=/tmp/dd_fashion \
      --data_dir=../shared/datasets

Measured (`default`, idle machine): 3,287 outer steps in the 600 s, then
2.2 min of evaluation: 65.57 +- 2.87% over 200 held-out inits.

Presets: `default` (10-minute budget), `quick` (a fixed 1,000 outer steps,
the README's main job, 50 held-out inits), `paper` (400 outer epochs),
`smoke` (seconds, for tests).
"""

from experiments import common
from experiments import presets

PRESETS = presets.DD_FASHION_MNIST
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).
main = common.distill_main(PRESETS)

if __name__ == "__main__":
  common.define_flags(PRESETS)
  common.run(main)
