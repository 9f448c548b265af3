"""DD's Table 3: an ImageNet-pretrained AlexNet adapted with distilled data.

Wang et al. 2018 (Sec. 4.3, Table 3; METHODS.md A.10, A.9, A.8) adapt
torchvision's ImageNet AlexNet to PASCAL-VOC (20 classes) and CUB-200 (200
classes) with ONE distilled image per class, one GD step repeated for three
epochs. `run_table3` does this with the library's own pieces:

1. The pretrained network: a weight file (`nn.alexnet.load_params`, checked
   against the expected shapes; optionally its top-1 on a small labelled
   ImageNet check set must reach `check_min_acc`, reported next to the
   56.52% torchvision states for the whole validation set), or a random
   initialisation without one (the smoke preset; its rows mean nothing).
2. Its last layer (fc8) is replaced by a freshly initialised one for the
   target classes; the result is a one-member pretrained pool and DD runs
   through `run.train_dd.run` with `init_mode="fixed_pretrained"` (the same
   outer step, meta-gradient and replay evaluation as every DD run). The
   distilled set is evaluated on that network itself, as in the paper.
3. Baselines on the same network (`methods.baselines.evaluate_all`, rows
   random real, optimized real, average real): the lr in {learned, grid}
   and the epochs are chosen on the validation split (held out of train);
   random real's selection uses its first set, its test number averages
   `random_sets` sets (one network each).
4. Fine-tuning on the full target set: minibatch SGD of the whole network
   (new head included) on the whole train split (`eval.replay.
   retrain_accuracy`), `full_target_runs` minibatch orders.

Each row is a test accuracy in % (mean, std over networks/sets).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax.data import transforms
from distill_jax.data import voc_cub
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import grid as grid_lib
from distill_jax.eval import replay as evaluate
from distill_jax.methods import baselines
from distill_jax.nn import alexnet
from distill_jax.nn import models
from distill_jax.run import storage

ROWS = ("random_real", "optimized_real", "average_real")
# RESULTS.md 1.3 (Wang et al. 2018, Table 3): (mean, std or None).
PAPER = {
    "voc": {"dd": (70.75, None), "random_real": (19.41, 3.73),
            "optimized_real": (23.82, 3.66), "average_real": (9.94, None),
            "full_target": (75.57, 0.18)},
    "caltech_birds2011": {"dd": (38.76, None), "random_real": (7.11, 0.66),
                          "optimized_real": (7.23, 0.78),
                          "average_real": (2.88, None),
                          "full_target": (41.21, 0.51)},
}


@dataclasses.dataclass(frozen=True)
class AdaptAlexNetConfig:
  """Flags of the Table 3 experiment (AlexNet -> VOC / CUB-200)."""
  target: str = "voc"
  weights: str = ""  # ImageNet AlexNet .npz / .msgpack; "" = random init.
  check_set: str = ""  # .npz of x (N, H, W, 3) uint8 and y ImageNet labels.
  check_min_acc: float = 0.0
  width: int = 64
  image_size: int = 224
  steps: int = 1
  epochs: int = 3
  lr_init: float = 0.02
  real_batch: int = 256
  dd_outer_steps: int = 2000  # 0: DistillConfig's outer_epochs.
  dd_time_budget_s: float = 0.0
  lr_grid: str = "learned,0.001,0.003,0.01,0.03,0.1,0.3"
  epoch_grid: tuple[int, ...] = (1, 3, 5)
  random_sets: int = 10
  optimized_sets: int = 50
  full_target_epochs: int = 10
  full_target_lr: float = 0.001
  full_target_batch: int = 64
  full_target_runs: int = 1
  val_size: int = 500
  train_limit: int = 0
  eval_batch: int = 100
  fake_classes: int = 4
  fake_train: int = 48
  seed: int = 0

  def validate(self) -> "AdaptAlexNetConfig":
    """Raises a one-line ValueError naming the bad field."""
    if self.target not in voc_cub.TARGETS:
      raise ValueError(f"target={self.target!r}; choose one of "
                       f"{voc_cub.TARGETS}.")
    if self.image_size < alexnet.MIN_SIZE:
      raise ValueError(f"image_size={self.image_size} must be >= "
                       f"{alexnet.MIN_SIZE} for AlexNet (224 for ImageNet "
                       "weights).")
    for name in ("width", "steps", "epochs", "real_batch", "random_sets",
                 "optimized_sets", "full_target_epochs", "full_target_batch",
                 "full_target_runs", "val_size", "eval_batch",
                 "fake_classes", "fake_train"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if not 0.0 <= self.check_min_acc <= 100.0:
      raise ValueError(f"check_min_acc={self.check_min_acc} must be a "
                       "percentage in [0, 100].")
    if self.check_set and not self.weights:
      raise ValueError("check_set needs --weights (random weights have no "
                       "ImageNet accuracy to check).")
    grid_lib.parse_lr_grid(self.lr_grid)
    return self


def load_check_set(path: str, image_size: int):
  """A labelled ImageNet check set: (normalised images, labels)."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such check set; pass --check_set=FILE.npz "
                     "with x (N, H, W, 3) uint8 and y (N,) ImageNet labels.")
  try:
    with np.load(path, allow_pickle=False) as z:
      x, y = np.asarray(z["x"]), np.asarray(z["y"])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a check set .npz with arrays x and y "
                     f"({type(e).__name__}: {e}).") from e
  if (x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or y.ndim != 1
      or len(y) != len(x) or not len(y)):
    raise ValueError(f"{path}: x must be (N, H, W, 3) uint8 and y (N,) "
                     f"labels; got x {x.shape} {x.dtype}, y {y.shape}.")
  x, y = voc_cub.to_arrays(
      [{"image": im, "label": int(lab)} for im, lab in zip(x, y)],
      "caltech_birds2011", image_size)  # the single-label path.
  return transforms.normalize(x, voc_cub.IMAGENET_MEAN,
                              voc_cub.IMAGENET_STD), y


def pretrained(cfg: AdaptAlexNetConfig, key: jax.Array):
  """The 1000-class network and what was checked about it."""
  model = alexnet.build(alexnet.IMAGENET_CLASSES,
                        (cfg.image_size, cfg.image_size, 3), cfg.width)
  if not cfg.weights:
    return model.init(key), {"weights": "random initialisation"}
  params = alexnet.load_params(
      cfg.weights, alexnet.shapes(alexnet.IMAGENET_CLASSES, cfg.width,
                                  cfg.image_size))
  info = {"weights": cfg.weights}
  if cfg.check_set:
    x, y = load_check_set(cfg.check_set, cfg.image_size)
    top1 = 100.0 * float(accuracy_lib.accuracy(
        model.apply, jax.tree.map(lambda a: a[None], params), x, y,
        batch=cfg.eval_batch)[0])
    info.update(check_set=cfg.check_set, check_top1=top1,
                stated_imagenet_top1=alexnet.TORCHVISION_TOP1)
    if top1 < cfg.check_min_acc:
      raise ValueError(
          f"{cfg.weights}: top-1 {top1:.1f}% on the check set "
          f"{cfg.check_set} is below --check_min_acc={cfg.check_min_acc}; "
          "are these ImageNet AlexNet weights converted with "
          "experiments/convert_torchvision_alexnet.py?")
  return params, info


def distill_config(cfg: AdaptAlexNetConfig, pool_path: str):
  """The DD run of Table 3: fixed pretrained init, S steps x E epochs."""
  return config_lib.DistillConfig(
      dataset=cfg.target, image_size=cfg.image_size, arch="alexnet",
      width=cfg.width, init="torch", init_mode="fixed_pretrained",
      pretrained_pool=pool_path, steps=cfg.steps, epochs=cfg.epochs,
      lr_init=cfg.lr_init, real_batch=cfg.real_batch,
      outer_steps=cfg.dd_outer_steps, time_budget_s=cfg.dd_time_budget_s,
      eval_inits=1, val_inits=1, val_size=cfg.val_size,
      train_limit=cfg.train_limit, eval_batch=cfg.eval_batch, seed=cfg.seed,
      log_every=10).validate()


def _copies(params, n: int):
  """`n` copies of one network on a leading axis (numpy views, no copy)."""
  return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a),
                                                (n, *np.shape(a))), params)


def run_table3(cfg: AdaptAlexNetConfig, workdir: str, *,
               data_dir: str | None = None,
               show_progress: bool = True) -> dict:
  """Runs DD, the baselines and full fine-tuning; returns the results.

  Args:
    cfg: the experiment configuration.
    workdir: output folder (pretrained_pool.npz, dd/ with the DD run).
    data_dir: TFDS data dir of the target (default $TFDS_DATA_DIR).
    show_progress: print progress.

  Returns:
    {"target", "pretrained", "rows": name -> {"test_acc": summary (%),
    ...}, "paper"}.
  """
  from distill_jax.run import train_dd  # pylint: disable=g-import-not-at-top
  cfg.validate()
  log = print if show_progress else (lambda s: None)
  k_pre, k_head, k_base, k_full = jax.random.split(jax.random.key(cfg.seed), 4)
  params, info = pretrained(cfg, k_pre)
  ds = voc_cub.load(cfg.target, image_size=cfg.image_size,
                    val_size=cfg.val_size, seed=cfg.seed,
                    train_limit=cfg.train_limit,
                    fake_classes=cfg.fake_classes, fake_train=cfg.fake_train,
                    data_dir=data_dir)
  params = alexnet.replace_head(params, k_head, ds.num_classes)
  os.makedirs(workdir, exist_ok=True)
  pool_path = os.path.join(workdir, "pretrained_pool.npz")
  storage.save_pool(pool_path, _copies(params, 1),
                    {"arch": "alexnet", "width": cfg.width,
                     "num_classes": ds.num_classes, **info})
  dcfg = distill_config(cfg, pool_path)
  report = train_dd.run(dcfg, os.path.join(workdir, "dd"), dataset=ds,
                        show_progress=show_progress)
  rows = {"dd": {"test_acc": report["test_acc"],
                 "outer_steps": report["outer_steps"],
                 "learned_lrs": report["learned_lrs"]}}
  log(f"DD: {report['test_acc']['mean']:.2f}")

  model = models.build(dcfg, ds.image_shape, ds.num_classes)
  rows.update(baselines.evaluate_all(
      k_base, model.apply, ds, steps=cfg.steps, per_class=1,
      learned_lrs=np.asarray(report["learned_lrs"], np.float32),
      val_params0=_copies(params, 1),
      test_params0=_copies(params, cfg.random_sets),
      lr_options=grid_lib.parse_lr_grid(cfg.lr_grid),
      epoch_options=cfg.epoch_grid, random_sets=cfg.random_sets,
      optimized_sets=cfg.optimized_sets, batch=cfg.eval_batch, log=log,
      rows=ROWS))
  rows["full_target"] = {
      "test_acc": accuracy_lib.summary(evaluate.retrain_accuracy(
          model.apply, jax.tree.map(jnp.asarray, _copies(
              params, cfg.full_target_runs)), k_full,
          jnp.asarray(ds.x_train), jnp.asarray(ds.y_train),
          jnp.asarray(ds.x_test), jnp.asarray(ds.y_test),
          lr=cfg.full_target_lr, epochs=cfg.full_target_epochs,
          batch_size=cfg.full_target_batch, batch=cfg.eval_batch)),
      "protocol": f"SGD lr {cfg.full_target_lr}, batch "
                  f"{cfg.full_target_batch}, {cfg.full_target_epochs} "
                  "epoch(s) of the whole network on the whole train split"}
  log(f"full target: {rows['full_target']['test_acc']['mean']:.2f}")
  return {"target": cfg.target, "num_classes": ds.num_classes,
          "train_images": int(len(ds.y_train)), "pretrained": info,
          "rows": rows, "paper": {k: list(v) for k, v in
                                  PAPER.get(cfg.target, {}).items()}}
