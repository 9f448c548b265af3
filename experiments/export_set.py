"""Export a distilled set as a TFDS dataset or an ImageFolder of PNGs.

  python -m experiments.export_set --distilled=W/distilled.npz \
      --format=tfds --out=~/tensorflow_datasets [--name=fashion_dd]
  python -m experiments.export_set --distilled=W/distilled.npz \
      --format=png --out=/tmp/fashion_dd_png

TFDS: then `tfds.data_source("distilled_set/fashion_dd", data_dir=OUT)`
(and `tfds.load` where TensorFlow is installed) serves the set, with its
labels, soft labels, class names, normalisation and learned lrs
(`builder.info.metadata`). PNG: `OUT/<kkk>_<class>/<i>.png` and
`OUT/set.json`. The formats: `distill_jax/run/export.py`.
"""

from absl import flags

from distill_jax.run import export
from experiments import common

flags.DEFINE_string("distilled", None, "the distilled.npz to export")
flags.DEFINE_string("out", None, "TFDS data_dir (tfds) or a new folder (png)")
flags.DEFINE_enum("format", "tfds", ["tfds", "png"],
                  "tfds: a TFDS dataset distilled_set/<name>; png: an "
                  "ImageFolder of 8-bit PNGs")
flags.DEFINE_string("name", "", "tfds: the export's name (default "
                    "<dataset>_<method>)")
FLAGS = flags.FLAGS


def main(argv):
  common.check_args(argv)
  try:
    out = export.export(FLAGS.distilled, FLAGS.out, FLAGS.format, FLAGS.name)
  except (ValueError, OSError) as e:
    common.fail(str(e))
  print(export.describe(out))


if __name__ == "__main__":
  flags.mark_flags_as_required(["distilled", "out"])
  common.run(main)
