"""The fair evaluation of any distilled set (DD, RaT-BPTT, decoupled, ...).

  python -m experiments.fair_eval --distilled=RUN/distilled.npz \
      --workdir=/tmp/fair --data_dir=../shared/datasets

Students trained on the set under the named protocol (soft labels from the
dataset's cached teacher, and hard labels), random real images of the same
IPC under the same protocols, HLR/IOR/LRS, bytes, diversity and TD
(`distill_jax.run.fair_eval`). The protocol flags are the decoupled
experiment's (`--post_labels`, `--post_epochs`, `--post_students`, ...); --preset
picks their defaults. Writes WORKDIR/report.json.
"""

from absl import flags

from distill_jax.methods.decoupled import config as decoupled_config
from distill_jax.run import train_decoupled
from experiments import common
from experiments import presets

PRESETS = presets.DECOUPLED
preset = PRESETS

flags.DEFINE_string("distilled", None, "the distilled.npz to evaluate")


def main(argv):
  common.check_args(argv)
  common.check_workdir(common.FLAGS.workdir)
  if not common.FLAGS.distilled:
    common.fail("--distilled: give the distilled.npz to evaluate.")
  cfg = common.config_from_flags(PRESETS,
                                 cfg_cls=decoupled_config.DecoupledConfig)
  common.run_and_report(train_decoupled.evaluate_file, cfg,
                        common.FLAGS.workdir,
                        platform_cfg=common.platform_from_flags(),
                        distilled=common.FLAGS.distilled,
                        **common.run_flags())


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=decoupled_config.DecoupledConfig)
  common.run(main)
