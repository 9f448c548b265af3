"""Pretrains a pool of networks for the pretrained init modes and poisoning.

Command (2-core CPU), e.g. 20 LeNets on MNIST for 1 epoch each:

  python -m experiments.pretrain --workdir=/tmp/pool_mnist \
      --data_dir=../shared/datasets --dataset=mnist --num_nets=20 --epochs=1

USPS networks for USPS->MNIST adaptation (resized to 28 px):

  python -m experiments.pretrain --workdir=/tmp/pool_usps \
      --data_dir=../shared/datasets --dataset=usps --image_size=28 \
      --num_nets=20 --epochs=5

Writes WORKDIR/pool.npz (use with --init_mode=random_pretrained
--pretrained_pool=WORKDIR/pool.npz) and WORKDIR/report.json.
"""

import dataclasses

from absl import app
from absl import flags

from distill_jax import pretrain
from experiments import common

FLAGS = flags.FLAGS


def preset(name: str = "default") -> pretrain.PretrainConfig:
  if name == "default":
    return pretrain.PretrainConfig()
  if name == "smoke":
    return pretrain.PretrainConfig(num_nets=2, epochs=0.2, chunk=2,
                                   batch_size=16)
  raise ValueError(f"Unknown preset {name!r}.")


PRESETS = {n: (lambda n=n: preset(n)) for n in ("default", "smoke")}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg = common.config_from_flags(PRESETS, pretrain.PretrainConfig)
  common.run_and_report(pretrain.run, cfg, FLAGS.workdir,
                        data_dir=FLAGS.data_dir, show_progress=FLAGS.progress)


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=pretrain.PretrainConfig)
  app.run(main)
