"""The decoupled family: squeeze, recover, relabel, post-train, fair eval.

Commands (2-core CPU; data from ../shared/datasets):

  python -m experiments.decoupled --method=sre2l --preset=fashion_ipc10 \
      --workdir=/tmp/sre2l_fashion10 --data_dir=../shared/datasets

  --method: sre2l, cda, delt (recover against the teacher's BN statistics),
  scdd (recover against a SimCLR teacher + linear probe, --ssl_* flags;
  relabel and post-train with the supervised teacher), gvbsm (a pool of
  teachers, --gvbsm_pool, round-robin; EMA, conv and Gram terms; the
  pool's ensemble relabels, MSE + CE students), rded (teacher-scored real
  crops), random_real. Teachers (and SC-DD's SSL teacher) are trained
  once per recipe and dataset and cached (--teacher_cache).

  python -m experiments.decoupled --method=scdd --preset=fashion_ipc10 \
      --workdir=/tmp/scdd_fashion10 --data_dir=../shared/datasets

Presets: fashion_ipc1, fashion_ipc10 (default), fashion_ipc50, cifar10_ipc1,
cifar10_ipc10,
cifar10_ipc50 (the offline JPEG copy of CIFAR-10), gpu_cifar10_ipc10/50
(the papers' settings), gpu_scdd_cifar100_ipc50, gpu_scdd_tiny_ipc50,
gpu_scdd_imagenet1k_ipc10 (SC-DD's settings), gpu_gvbsm_cifar100_ipc50, gpu_gvbsm_tiny_ipc50,
gpu_gvbsm_imagenet1k_ipc10 (G-VBSM's settings), smoke. With --method=scdd
every preset takes SC-DD's recover settings (lr 0.4, r_bn 0.005, jitter 4,
no crop or flip) except those given as flags. Measured results:
docs/results/decoupled.md.

--data_source=stream reads the train and test splits from the prepared
TFDS files by index (teacher, selection, statistics and evaluation), for
datasets larger than memory.

Outputs in --workdir: config.json, recover/ (metrics.jsonl, checkpoints),
distilled.npz (a DistilledSet with hard labels), report.json (soft- and
hard-label accuracy, random real under the same protocols, HLR/IOR/LRS,
bytes, diversity, TD; epochs chosen on validation).
"""

from distill_jax.methods.decoupled import config as decoupled_config
from distill_jax.run import train_decoupled
from experiments import common
from experiments import presets

PRESETS = presets.DECOUPLED
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


def _run(cfg, workdir, **kwargs):
  return train_decoupled.run(cfg, workdir, **kwargs)


def main(argv):
  common.check_args(argv)
  common.check_workdir(common.FLAGS.workdir)
  cfg = common.config_from_flags(PRESETS,
                                 cfg_cls=decoupled_config.DecoupledConfig)
  common.run_and_report(_run, cfg, common.FLAGS.workdir,
                        platform_cfg=common.platform_from_flags(),
                        **common.run_flags())


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=decoupled_config.DecoupledConfig)
  common.run(main)
