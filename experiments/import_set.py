"""Import another toolkit's released distilled set as a distilled.npz.

  python -m experiments.import_set --format=mtt --input=RUN_FOLDER \
      --dataset=cifar10 --zca=no --out=W/distilled.npz
  python -m experiments.fair_eval --distilled=W/distilled.npz --workdir=W2

Formats: rat_bptt_h5, frepo, rcig, kip, mtt (MTT/DATM .pt files, read
without torch or arbitrary unpickling), dd_ranking_folder. The set is
stored with method `imported` and its preprocessing contract in the
metadata (`distill_jax/importers/`, docs/interop.md "Import"). Datasets
without a known normalisation need --mean/--std.
"""

from absl import flags

from distill_jax import importers
from distill_jax.run import storage
from experiments import common

flags.DEFINE_enum("format", None, list(importers.FORMATS),
                  "the source toolkit's layout")
flags.DEFINE_string("input", None, "the file or folder to import")
flags.DEFINE_string("dataset", None, "the dataset the set was distilled on "
                    "(e.g. cifar10, mnist; stored for the fair evaluation)")
flags.DEFINE_string("out", None, "the distilled.npz to write")
flags.DEFINE_enum("zca", "auto", list(importers.ZCA_CHOICES),
                  "whether the images are ZCA-whitened (auto: the format's "
                  "default; an error where the file does not say)")
flags.DEFINE_list("mean", None, "the source normalisation's per-channel "
                  "mean in [0, 1] pixel units (datasets without a known one)")
flags.DEFINE_list("std", None, "the source normalisation's per-channel std")
FLAGS = flags.FLAGS


def _floats(name: str, values):
  if values is None:
    return None
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    common.fail(f"--{name}={','.join(values)}: give numbers, e.g. "
                f"--{name}=0.5,0.5,0.5.")


def main(argv):
  common.check_args(argv)
  if not str(FLAGS.out).endswith(".npz"):
    common.fail(f"--out={FLAGS.out}: give the .npz file to write (e.g. "
                "W/distilled.npz).")
  try:
    dset = importers.load(FLAGS.format, FLAGS.input, dataset=FLAGS.dataset,
                          zca=FLAGS.zca, mean=_floats("mean", FLAGS.mean),
                          std=_floats("std", FLAGS.std))
    storage.save_distilled_set(FLAGS.out, dset)
  except (ValueError, OSError) as e:
    common.fail(str(e))
  c = dset.metadata["contract"]
  print(f"{FLAGS.out}: {len(dset.labels)} images {dset.images.shape[1:]} of "
        f"{dset.num_classes} classes from {FLAGS.format} "
        f"({'ZCA' if c['zca'] else 'no ZCA'}, mean {c['mean']}, std "
        f"{c['std']}, labels: {c['label_form']})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["format", "input", "dataset", "out"])
  common.run(main)
