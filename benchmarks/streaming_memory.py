"""Peak memory of a distillation whose dataset does not fit in memory.

Generates a dataset of random uint8 images (class-dependent brightness, so
it is learnable; `generate`) as a prepared TFDS ArrayRecord folder larger than the
memory limit, then runs a short RaT-BPTT distillation (tiny MLP, a few
outer steps, a streamed final evaluation on the test split) on it in a
child process under that limit, once with ``data_source='stream'`` and
once with ``data_source='memory'``, and reports each child's peak resident
memory (``ru_maxrss``) against the dataset's size, as JSON.

The limit is ``RLIMIT_DATA`` (``resource.setrlimit`` in the child): since
Linux 4.7 it bounds the process's private writable memory (heap and
anonymous mappings, where numpy arrays live) but not file pages read
through the page cache. ``RLIMIT_AS`` (``prlimit --as``) is not used: XLA
reserves address space far beyond what it touches (a process importing
JAX fails to start under 1 GB of address space), so it would bound
reservations, not memory. The in-memory run is expected to fail under the
limit (MemoryError, or killed by the allocator) as it reads the split into
arrays; the streamed one reads only its batches.

Usage (about 3 minutes on 2 busy CPU cores, most of it the streamed run's
one pass over the records)::

  python benchmarks/streaming_memory.py --root=/tmp/stream_bench \\
      --train=700000 --test=20000 --limit_mb=1536

``--method=delt`` (or another decoupled method) runs the decoupled pipeline
instead (`_decoupled_child`): teacher, selection or recovery, and the fair
evaluation, every one of them on the streamed splits.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/distill_jax_stream_bench",
                    "where the generated dataset and the runs go")
flags.DEFINE_integer("train", 700000, "generated training images")
flags.DEFINE_integer("test", 20000, "generated test images")
flags.DEFINE_integer("side", 32, "image height and width (3 channels)")
flags.DEFINE_integer("limit_mb", 1536, "RLIMIT_DATA of the child runs (MiB)")
flags.DEFINE_integer("outer_steps", 4, "outer steps of each run")
flags.DEFINE_string("method", "rat_bptt", "rat_bptt, or a decoupled method "
                    "(delt, sre2l, cda, rded, random_real): its teacher, "
                    "selection and fair evaluation on the streamed splits")
flags.DEFINE_string("child", None, "internal: run one child ('stream' or "
                    "'memory') on --dataset in --workdir")
flags.DEFINE_string("dataset", None, "internal: the child's dataset folder")
flags.DEFINE_string("workdir", None, "internal: the child's workdir")
flags.DEFINE_string("out", None, "also write the JSON report here")

CLASSES = 10


def make_builder(data_dir: str, train: int, test: int, side: int):
  """The TFDS builder of the generated dataset (prepared by the caller)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top

  class GeneratedImages(tfds.core.GeneratorBasedBuilder,
                        skip_registration=True):
    """Random pixels in [12 c, 12 c + 20) for class c (learnable)."""
    VERSION = tfds.core.Version("1.0.0")
    code_path = epath.Path(__file__)
    pkg_dir_path = epath.Path(__file__).parent  # also when run as __main__.

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Tensor(shape=(side, side, 3),
                                            dtype=np.uint8),
              "label": tfds.features.ClassLabel(num_classes=CLASSES)}),
          supervised_keys=("image", "label"), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(train, 0),
              "test": self._generate_examples(test, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for start in range(0, n, 10000):
        k = min(n, start + 10000) - start
        y = (np.arange(start, start + k) % CLASSES).astype(np.int64)
        x = rng.integers(0, 128 - 12 * (CLASSES - 1), (k, side, side, 3),
                         dtype=np.uint8)
        x += (12 * y).astype(np.uint8)[:, None, None, None]
        for i in range(k):
          yield start + i, {"image": x[i], "label": int(y[i])}

  return GeneratedImages(data_dir=data_dir, file_format="array_record")


def _templates(features, shape) -> list[tuple[bytes, int]]:
  """One serialised example per class and where its image bytes start
  (the order of the features in a record varies). TFDS stores uint8
  tensors as packed varints, one byte each for values below 128: the
  generated pixels stay below 128 so a record is the template with those
  bytes replaced."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(123)
  out = []
  for c in range(CLASSES):
    image = rng.integers(0, 128, shape, dtype=np.uint8)
    record = features.serialize_example({"image": image, "label": c})
    off = record.find(image.tobytes())
    assert off > 0 and record.find(image.tobytes(), off + 1) < 0
    out.append((record, off))
  return out


def _write_split(path: str, options: str, features, n: int, seed: int,
                 shape) -> int:
  """Writes ``n`` examples as TFDS serialises them; returns bytes written."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from array_record.python import array_record_module
  templates = _templates(features, shape)
  size = int(np.prod(shape))
  writer = array_record_module.ArrayRecordWriter(path, options)
  rng = np.random.default_rng(seed)
  for start in range(0, n, 10000):
    k = min(n, start + 10000) - start
    y = np.arange(start, start + k) % CLASSES
    x = rng.integers(0, 128 - 12 * (CLASSES - 1), (k, size), dtype=np.uint8)
    x += (12 * y).astype(np.uint8)[:, None]  # < 128: see `_templates`.
    for i in range(k):
      t, off = templates[y[i]]
      writer.write(t[:off] + x[i].tobytes() + t[off + size:])
  writer.close()
  return os.path.getsize(path)


def generate(root: str) -> tuple[str, float]:
  """Prepares the dataset once; returns its folder and preparing time.

  TFDS's own writer serialises ~3000 examples/s here, so only a copy of
  one example per class is prepared by it (dataset_info.json,
  features.json, the writer options); the full splits are then written
  with ``ArrayRecordWriter`` as the same serialised examples (one template
  per class, the image bytes replaced) and dataset_info.json's split sizes
  are updated. The result is checked by reading records back.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from array_record.python import array_record_module
  t = time.time()
  sizes = {"train": FLAGS.train, "test": FLAGS.test}
  shape = (FLAGS.side, FLAGS.side, 3)
  builder = make_builder(os.path.join(root, "data"), CLASSES, CLASSES,
                         FLAGS.side)
  folder = os.fspath(builder.data_dir)
  info_path = os.path.join(folder, "dataset_info.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      done = {s["name"]: int(s["shardLengths"][0])
              for s in json.load(f)["splits"]}
    if done == sizes:
      return folder, 0.0
  builder.download_and_prepare()
  with open(info_path) as f:
    info = json.load(f)
  for split in info["splits"]:
    name = split["name"]
    path = os.path.join(folder, f"{builder.name}-{name}.array_record-"
                        "00000-of-00001")
    options = array_record_module.ArrayRecordReader(
        path).writer_options_string()
    split["numBytes"] = str(_write_split(
        path, options, builder.info.features, sizes[name],
        {"train": 0, "test": 1}[name], shape))
    split["shardLengths"] = [str(sizes[name])]
  with open(info_path, "w") as f:
    json.dump(info, f, indent=2)
  check = tfds.builder_from_directory(folder).as_data_source("train")
  assert len(check) == FLAGS.train
  for i in np.random.default_rng(0).integers(0, FLAGS.train, 100):
    e = check[int(i)]
    assert e["label"] == i % CLASSES and e["image"].shape == shape
    assert int(e["image"].min()) >= 12 * (i % CLASSES)
  return folder, round(time.time() - t, 1)


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def run_child(source: str, folder: str, workdir: str) -> dict:
  """One distillation under the limit, in this process (the child)."""
  limit = FLAGS.limit_mb << 20
  resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
  t = time.time()
  out = {"data_source": source, "limit_mib": FLAGS.limit_mb}
  try:
    if FLAGS.method != "rat_bptt":
      out.update(_decoupled_child(source, folder, workdir))
      raise _Done
    # pylint: disable-next=g-import-not-at-top
    from distill_jax.methods import rat_bptt
    from distill_jax.run import train_rat  # pylint: disable=g-import-not-at-top
    cfg = rat_bptt.RatConfig(
        dataset=folder, arch="mlp", mlp_hidden=(32,), ipc=1,
        batch_per_class=1, total_steps=10, window=5, real_batch=256,
        num_inits=1, inner_opt="sgd", inner_lr=0.05, syn_aug="none",
        real_aug="none", outer_steps=FLAGS.outer_steps, eval_every=0,
        eval_budgets=(50,), val_nets=1, eval_nets=1, eval_batch=256,
        log_every=1, checkpoint_every=0, val_size=1000,
        data_source=source)
    report = train_rat.run(cfg, workdir, show_progress=False)
    out.update(ok=True, test_acc=report["test_acc"]["mean"],
               outer_steps=report["outer_steps"])
  except _Done:
    pass
  except MemoryError as e:
    out.update(ok=False, error=f"MemoryError: {str(e)[:200]}")
  out["time_s"] = round(time.time() - t, 1)
  out["peak_rss_mib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  return out


class _Done(Exception):
  """The decoupled child finished (its report is in `out`)."""


def _decoupled_child(source: str, folder: str, workdir: str) -> dict:
  """A decoupled run (`--method`) at tiny model sizes: the teacher trained
  on 5 % of an epoch by the host loop, DELT's scoring pass over the whole
  train split, recovery, then the fair evaluation (students, random real,
  diversity, TD) with the test split read in passes."""
  # pylint: disable-next=g-import-not-at-top
  from distill_jax.methods.decoupled import config as config_lib
  from distill_jax.run import train_decoupled  # pylint: disable=g-import-not-at-top
  cfg = config_lib.DecoupledConfig(
      method=FLAGS.method, dataset=folder, ipc=1, val_size=1000,
      data_source=source, rded_candidates=50,
      teacher_cache=os.path.join(workdir, "teachers"),
      eval_hard=False).replace_flat(
          teacher_width=16, teacher_depth=2, teacher_epochs=0.05,
          teacher_batch_size=256, recover_iterations=16, recover_rounds=2,
          post_width=16, post_depth=2, post_epochs=20, post_eval_every=10)
  report = train_decoupled.run(cfg, workdir, show_progress=False)
  return {"ok": True, "method": FLAGS.method,
          "teacher_test_acc": report["teacher_test_acc"],
          "test_acc": report["test_acc"]["mean"],
          "random_real_test_acc": report["evaluation"]["random_real_soft"][
              "test_acc"]["mean"],
          "td": report["evaluation"].get("td")}


def _spawn(source: str, folder: str) -> dict:
  """Runs a child and returns its report (or how it died)."""
  cmd = [sys.executable, os.path.abspath(__file__),
         f"--child={source}", f"--dataset={folder}",
         f"--workdir={os.path.join(FLAGS.root, 'run_' + source)}",
         f"--limit_mb={FLAGS.limit_mb}",
         f"--outer_steps={FLAGS.outer_steps}", f"--method={FLAGS.method}"]
  # One malloc arena, as the RaT-BPTT entry points configure it
  # (--malloc_arenas): the record reader's ~64 threads would otherwise each
  # keep an arena of freed buffers (+300 MiB resident after 250k reads).
  env = dict(os.environ, MALLOC_ARENA_MAX="1")
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                        env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode == 0 and lines:
    return json.loads(lines[-1])
  tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
  return {"data_source": source, "ok": False,
          "returncode": proc.returncode, "error": tail}


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps(run_child(FLAGS.child, FLAGS.dataset, FLAGS.workdir)))
    return
  folder, prep_s = generate(FLAGS.root)
  side = FLAGS.side
  report = {
      "dataset": {"train": FLAGS.train, "test": FLAGS.test,
                  "image": [side, side, 3],
                  "train_pixels_mib": round(
                      FLAGS.train * side * side * 3 / 2**20, 1),
                  "prepared_files_mib": round(_folder_bytes(folder) / 2**20,
                                              1),
                  "prepare_s": prep_s},
      "limit": f"RLIMIT_DATA {FLAGS.limit_mb} MiB",
      "method": FLAGS.method,
      "runs": [_spawn("stream", folder), _spawn("memory", folder)],
  }
  text = json.dumps(report, indent=1)
  print(text)
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
