"""`DecoupledConfig`: one flat, validated configuration of a decoupled run.

Squeeze (teacher_*), recover (recover_*, rded_*), relabel and post-train
(post_* and the label fields) and the fair evaluation (eval_*). Flat, so
that every field is one command-line flag; `teacher()`, `recover()` and
`post()` build the stage configurations.
"""

import dataclasses
import json

from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import recover as recover_lib
from distill_jax.methods.decoupled import teacher as teacher_lib

METHODS = ("sre2l", "cda", "delt", "rded", "random_real")


@dataclasses.dataclass(frozen=True)
class DecoupledConfig:
  """A decoupled distillation run and its evaluation."""
  method: str = "sre2l"
  dataset: str = "fashion_mnist"
  ipc: int = 10
  val_size: int = 5000
  image_size: int = 0
  channels: int = 0
  train_limit: int = 0
  seed: int = 0
  # Squeeze.
  teacher_arch: str = "convnet_bn"
  teacher_width: int = 64
  teacher_depth: int = 3
  teacher_epochs: float = 2.0
  teacher_batch: int = 256
  teacher_optimizer: str = "sgd"
  teacher_lr: float = 0.05
  teacher_weight_decay: float = 5e-4
  teacher_pad_crop: int = 0
  teacher_flip: bool = False
  teacher_cache: str = ""  # "" = ~/.cache/distill_jax/teachers
  # Recover (SRe2L, CDA, DELT).
  recover_iterations: int = 1000
  recover_lr: float = 0.25
  r_bn: float = 0.01
  first_bn_multiplier: float = 10.0
  batching: str = ""  # "": DELT class_grouped, else cross_class
  recover_batch: int = 0
  per_image_aug: bool = False
  recover_crop: bool = True
  recover_min_scale: float = 0.25
  recover_flip: bool = False
  jitter: int = 2
  cda_mode: str = "cosine"
  milestone: float = 1.0
  recover_init: str = ""
  rounds: int = 8
  jpeg_quality: int = 0  # > 0: JPEG round trip of the output (faithful).
  # RDED.
  rded_factor: int = 1
  rded_crops: int = 5
  rded_candidates: int = 300
  # Relabel and post-train.
  student_arch: str = "convnet_bn"
  student_width: int = 64
  student_depth: int = 3
  labels: str = "online"
  teacher_bn: str = "eval"
  stored_topk: int = 0
  post_epochs: int = 300
  post_batch: int = 0
  post_optimizer: str = "adamw"
  post_lr: float = 1e-3
  post_weight_decay: float = 0.01
  post_schedule: str = "cosine"
  temperature: float = 20.0
  t_squared: bool = False
  mix: str = "cutmix"
  post_crop: bool = True
  post_min_scale: float = 0.25
  post_flip: bool = False
  students: int = 3
  eval_every: int = 25
  select: str = "val"
  parallel: str = "map"
  # Fair evaluation.
  eval_hard: bool = True
  eval_random: bool = True
  eval_metrics: bool = True
  cross_archs: str = ""  # e.g. "resnet_small": extra soft-label students.

  def __post_init__(self):
    self.validate()

  def validate(self) -> "DecoupledConfig":
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r}; choose one of {METHODS}.")
    if self.val_size < 1:
      raise ValueError(f"val_size={self.val_size}: post-train selects its "
                       "epoch on a validation split; set val_size > 0.")
    if self.rded_factor < 1 or self.rded_crops < 1 or \
        self.rded_candidates < self.ipc * self.rded_factor ** 2:
      raise ValueError("rded_factor and rded_crops must be >= 1 and "
                       "rded_candidates >= ipc * rded_factor^2.")
    if self.jpeg_quality < 0 or self.jpeg_quality > 100:
      raise ValueError(f"jpeg_quality={self.jpeg_quality} must be in "
                       "[0, 100] (0: off).")
    self.teacher()
    self.recover()
    self.post()
    return self

  def teacher(self) -> teacher_lib.TeacherConfig:
    return teacher_lib.TeacherConfig(
        arch=self.teacher_arch, width=self.teacher_width,
        depth=self.teacher_depth, epochs=self.teacher_epochs,
        batch_size=self.teacher_batch, optimizer=self.teacher_optimizer,
        lr=self.teacher_lr, weight_decay=self.teacher_weight_decay,
        pad_crop=self.teacher_pad_crop, flip=self.teacher_flip,
        seed=self.seed)

  def recover(self) -> recover_lib.RecoverConfig:
    method = self.method if self.method in recover_lib.METHODS else "sre2l"
    return recover_lib.RecoverConfig(
        method=method, ipc=self.ipc, iterations=self.recover_iterations,
        lr=self.recover_lr, r_bn=self.r_bn,
        first_bn_multiplier=self.first_bn_multiplier,
        batching=self.batching or (
            "class_grouped" if method == "delt" else "cross_class"),
        batch_size=self.recover_batch,
        per_image_aug=self.per_image_aug, crop=self.recover_crop,
        min_scale=self.recover_min_scale, flip=self.recover_flip,
        jitter=self.jitter, cda_mode=self.cda_mode,
        milestone=self.milestone, init=self.recover_init,
        rounds=self.rounds, seed=self.seed)

  def post(self, **overrides) -> posttrain.PostTrainConfig:
    kw = dict(
        arch=self.student_arch, width=self.student_width,
        depth=self.student_depth, labels=self.labels,
        epochs=self.post_epochs, batch_size=self.post_batch,
        optimizer=self.post_optimizer, lr=self.post_lr,
        weight_decay=self.post_weight_decay, schedule=self.post_schedule,
        temperature=self.temperature, t_squared=self.t_squared,
        mix=self.mix, crop=self.post_crop, min_scale=self.post_min_scale,
        flip=self.post_flip, teacher_bn=self.teacher_bn,
        stored_topk=self.stored_topk, students=self.students,
        eval_every=min(self.eval_every, self.post_epochs),
        select=self.select, parallel=self.parallel, seed=self.seed)
    kw.update(overrides)
    return posttrain.PostTrainConfig(**kw)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)
