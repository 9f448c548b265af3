"""Post-train: fresh students trained on a (distilled) set, epoch chosen
on validation.

Students are trained with the one routine that trains fresh networks
(`eval.fit.supervised`) under a named protocol (`PostTrainConfig`):

  * labels "hard": CE on the set's labels (one-hot, mixed under CutMix);
  * labels "online": KL to the teacher's softmax at temperature T on the
    student's own (mixed) input (DELT/RDED; SRe2L CIFAR);
  * labels "stored": KL to FKD-style stored logits keyed by (epoch, image)
    (`relabel.store`), the views re-created from their keys.

KL is batch-mean KL(p_teacher || p_student) at temperature T, optionally
x T^2 (METHODS.md C.6 item 4). `loss="mse_ce"` (G-VBSM, C.4) is instead
MSE(z_student, z_teacher) + ce_weight * CE(z_student, label) on the
teacher's (an ensemble's mean) logits, no temperature. AdamW (no decay on 1-D parameters) or SGD,
cosine to 0 (SRe2L) or the half cosine ending at 0.5x (RDED/DELT, C.5).
Every `eval_every` epochs the students are scored on the validation split;
the reported test accuracy is at the epoch with the best mean validation
accuracy (or the last epoch), never chosen on the test set (C.8 item 1:
the released code selects the best test epoch).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data import crops
from distill_jax.data import sources
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import fit
from distill_jax.methods.decoupled import relabel
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.nn import stat_models
from distill_jax.platform import mesh as sharding

LABELS = ("hard", "online", "stored")
MIXES = ("cutmix", "mixup", "none")
SELECTS = ("val", "last")
LOSSES = ("", "kl", "mse_ce")


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
  """A named post-train protocol (defaults: C.7's CPU suggestion)."""
  arch: str = "convnet_bn"
  width: int = 64
  depth: int = 3
  labels: str = "online"
  epochs: int = 300
  batch_size: int = 0  # 0: DELT's table (IPC 1 -> 10, 10-20 -> 50, else 100).
  optimizer: str = "adamw"
  lr: float = 1e-3
  weight_decay: float = 0.01
  schedule: str = "cosine"
  temperature: float = 20.0
  t_squared: bool = False
  loss: str = ""  # soft-label loss: kl, mse_ce; "" = kl (G-VBSM: mse_ce).
  ce_weight: float = 0.15  # mse_ce: weight of the CE on the label.
  mix: str = "cutmix"
  crop: bool = True
  min_scale: float = 0.25
  flip: bool = False
  teacher_bn: str = "eval"
  stored_epochs: int = 0  # stored labels: epochs of views (0: `epochs`).
  stored_topk: int = 0  # stored labels: keep the top-k logits (0: all).
  students: int = 3
  eval_every: int = 25  # epochs between validation checks.
  select: str = "val"
  parallel: str = "map"  # students one after another (CPU) or "vmap".
  seed: int = 0

  def __post_init__(self):
    for name, allowed in (("labels", LABELS), ("mix", MIXES),
                          ("loss", LOSSES),
                          ("select", SELECTS),
                          ("teacher_bn", relabel.BN_MODES),
                          ("optimizer", teacher_lib.OPTIMIZERS),
                          ("schedule", teacher_lib.SCHEDULES),
                          ("parallel", fit.PARALLEL)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; choose one of "
                         f"{allowed}.")
    if min(self.epochs, self.students, self.eval_every) < 1:
      raise ValueError("epochs, students and eval_every must be >= 1.")
    if not self.temperature > 0 or not self.lr > 0:
      raise ValueError("temperature and lr must be > 0.")
    if self.ce_weight < 0:
      raise ValueError(f"ce_weight={self.ce_weight} must be >= 0.")

  def view(self) -> relabel.ViewConfig:
    return relabel.ViewConfig(crop=self.crop, min_scale=self.min_scale,
                              flip=self.flip, seed=self.seed)

  def student_spec(self, num_classes: int, image_shape) -> dict:
    return stat_models.spec_for(self.arch, width=self.width,
                                depth=self.depth, num_classes=num_classes,
                                image_shape=image_shape)


def batch_size_for(ipc: int, num_classes: int) -> int:
  """DELT/RDED's post-train batch by IPC (C.5), capped at IPC x C."""
  base = 10 if ipc <= 1 else 50 if ipc <= 20 else 100
  if num_classes >= 100:
    base *= 2
  return min(base, ipc * num_classes)


def kd_loss(temperature: float, t_squared: bool):
  """`(logits, p_teacher) -> batch-mean KL(p_teacher || softmax(z/T))`."""
  def loss(logits, p):
    logq = jax.nn.log_softmax(logits / temperature)
    kl = jnp.sum(jax.scipy.special.xlogy(p, p) - p * logq, -1)
    return jnp.mean(kl) * (temperature ** 2 if t_squared else 1.0)
  return loss


def mse_ce_loss(ce_weight: float):
  """`(logits, [z_teacher, y]) -> MSE(logits, z_teacher) + w CE(logits, y)`.

  The target is the teacher logits (N, K) concatenated with the (mixed)
  one-hot labels (N, K) (`relabel.with_hard_labels`); MSE is the mean over
  all N x K entries (PyTorch's MSELoss), CE the batch mean.
  """
  def loss(logits, target):
    k = logits.shape[-1]
    z, y = target[:, :k], target[:, k:]
    mse = jnp.mean(jnp.square(logits - z))
    ce = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), -1))
    return mse + ce_weight * ce
  return loss


def hard_loss(logits, p):
  return -jnp.mean(jnp.sum(p * jax.nn.log_softmax(logits), -1))


def _mix(name: str):
  if name == "cutmix":
    return lambda key, x: crops.cutmix(key, x)
  if name == "mixup":
    return lambda key, x: crops.mixup(key, x)
  return None


def _targets(cfg: PostTrainConfig, images, labels, num_classes: int, teacher,
             stored, per_epoch: int):
  """(augment, targets, loss, stored labels or None) of the protocol:
  hard labels, the online teacher, or stored labels (computed here when
  not given), with MSE + gamma CE or KL at the temperature."""
  if cfg.labels == "hard":
    augment, targets = relabel.hard_targets(
        labels, cfg.view() if cfg.crop or cfg.flip else None, num_classes)
    return augment, targets, hard_loss, stored
  if teacher is None and (cfg.labels == "online" or stored is None):
    raise ValueError(f"labels={cfg.labels!r} needs a teacher.")
  output = "logits" if cfg.loss == "mse_ce" else "probs"
  if cfg.labels == "online":
    augment, targets = relabel.online_targets(
        teacher, cfg.view(), cfg.temperature, cfg.teacher_bn, output)
  else:
    stored = stored or relabel.store(
        teacher, images, cfg.stored_epochs or cfg.epochs, cfg.view(),
        bn_mode=cfg.teacher_bn, top_k=cfg.stored_topk)
    augment, targets = relabel.stored_targets(stored, per_epoch,
                                              cfg.temperature, output)
  if cfg.loss == "mse_ce":
    targets = relabel.with_hard_labels(targets, labels, num_classes)
    return augment, targets, mse_ce_loss(cfg.ce_weight), stored
  return augment, targets, kd_loss(cfg.temperature, cfg.t_squared), stored


def train_students(cfg: PostTrainConfig, images, labels, ds, teacher=None,
                   stored: relabel.StoredLabels | None = None) -> dict:
  """Trains `cfg.students` fresh students on (images, labels).

  Args:
    cfg: the protocol.
    images: (N, H, W, C) normalised float images.
    labels: (N,) integer labels.
    ds: the dataset (validation and test splits, normalisation).
    teacher: a `teacher.Teacher` (labels "online").
    stored: stored labels (labels "stored"; `relabel.store` otherwise).

  Returns:
    dict: "val_by_epoch" {epoch: summary}, "epoch" (selected), "test_acc"
    (summary over students, %), "test" (per-student accuracies), "steps".
  """
  t0 = time.time()
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  n = images.shape[0]
  ipc = max(1, n // ds.num_classes)
  batch = min(cfg.batch_size or batch_size_for(ipc, ds.num_classes), n)
  per_epoch = max(1, n // batch)
  model = stat_models.build(cfg.student_spec(ds.num_classes, ds.image_shape))
  augment, targets, loss, stored = _targets(cfg, images, labels,
                                            ds.num_classes, teacher, stored,
                                            per_epoch)
  steps = cfg.epochs * per_epoch
  tx = teacher_lib.optimizer(cfg.optimizer, cfg.lr, steps,
                             schedule=cfg.schedule,
                             weight_decay=cfg.weight_decay)
  trainer = fit.supervised(model, tx, images, fit.epoch_batches(n, batch),
                           loss, targets=targets, augment=augment,
                           mix=_mix(cfg.mix),
                           mesh=sharding.data_mesh(batch,
                                                   "post-train batch size"))
  epochs = sorted({*range(cfg.eval_every, cfg.epochs + 1, cfg.eval_every),
                   cfg.epochs})
  key = jax.random.key(cfg.seed)
  k_init, k_order, k_aug = jax.random.split(key, 3)
  k = cfg.students
  per_net = {"init_key": jax.random.split(k_init, k),
             "key": jax.random.split(k_aug, k),
             "keys": jax.vmap(lambda kk: jax.random.split(kk, cfg.epochs))(
                 jax.random.split(k_order, k))}
  out = jax.jit(lambda p: fit.fit(trainer, p, [e * per_epoch for e in epochs],
                                  parallel=cfg.parallel))(per_net)
  apply = teacher_lib.eval_apply(model)
  norm = teacher_lib.norm_of(ds)

  def acc(i, split):
    return accuracy_lib.accuracy_on(apply, jax.tree.map(lambda a: a[i], out),
                                    split, norm=norm)
  result = {"steps": steps, "batch_size": batch, "epochs": epochs}
  if cfg.select == "val" and len(ds.y_val):
    val = [acc(i, (ds.x_val, ds.y_val)) for i in range(len(epochs))]
    best = int(np.argmax([v.mean() for v in val]))
    result["val_by_epoch"] = {str(e): accuracy_lib.summary(v)
                              for e, v in zip(epochs, val)}
  else:
    best = len(epochs) - 1
  test = acc(best, sources.of(ds, "test"))
  result.update(epoch=epochs[best], test=[float(a) for a in test],
                test_acc=accuracy_lib.summary(test))
  if stored is not None:
    result["label_bytes"] = stored.nbytes()
  result["time_s"] = round(time.time() - t0, 1)
  result["variables"] = jax.tree.map(lambda a: a[best], out)
  result["model"] = model
  return result
