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

from distill_jax.run import train_pool as pretrain
from experiments import common
from experiments import presets

PRESETS = presets.PRETRAIN
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).
main = common.config_main(PRESETS, pretrain.PretrainConfig, pretrain.run)

if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=pretrain.PretrainConfig)
  common.run(main)
