"""`DecoupledConfig`: a decoupled run and its evaluation, validated.

The run's own fields (method, data, IPC, seed, evaluation options) and one
configuration per stage: `teacher` (squeeze, `teacher.TeacherConfig`),
`recover` (`recover.RecoverConfig`) and `post` (relabel and post-train,
`posttrain.PostTrainConfig`), and for SC-DD `ssl` (the self-supervised
teacher, `ssl.SSLConfig`). Each stage field is written once, in its
stage's class; the command line flattens them with a prefix
(`--teacher_lr`, `--recover_iterations`, `--post_epochs`, `--ssl_epochs`;
`NESTED`). The stages' method, IPC and seed come from the run
(`teacher_cfg()`, `recover_cfg()`, `post_cfg()`, `ssl_cfg()`).

`replace_flat(method="scdd")` on a config of another method also applies
SC-DD's recover settings (`SCDD_RECOVER`, C.3's CIFAR ones) to every
recover field not given in the same call, so presets and explicit flags
combine: `--preset=fashion_ipc10 --method=scdd --recover_lr=0.2` keeps
lr 0.2 and takes SC-DD's r_bn, jitter, crop and flip.
G-VBSM's pool (`gvbsm_pool`) lists the teachers trained with the teacher
recipe, one architecture each.
"""

import dataclasses
import json

from distill_jax.data import registry as data_registry
from distill_jax.methods.decoupled import gvbsm
from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import recover as recover_lib
from distill_jax.methods.decoupled import ssl as ssl_lib
from distill_jax.methods.decoupled import teacher as teacher_lib

METHODS = ("sre2l", "cda", "delt", "gvbsm", "rded", "random_real",
           "scdd")
# SC-DD's recover (METHODS.md C.3, CIFAR; C.7): SRe2L with these settings.
SCDD_RECOVER = {"recover_lr": 0.4, "recover_r_bn": 0.005,
                "recover_jitter": 4, "recover_crop": False,
                "recover_flip": False}

# Stage field -> (flag prefix, its fields set by the run, not by flags).
NESTED = {"teacher": ("teacher_", ("seed",)),
          "recover": ("recover_", ("method", "ipc", "seed")),
          "post": ("post_", ("seed",)),
          "ssl": ("ssl_", ("seed",))}


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
  # memory, stream (the train and test splits read from the prepared files
  # by index: teachers, selection, statistics and evaluation; C.8 sizes),
  # or auto (stream when larger than memory allows).
  data_source: str = "memory"
  seed: int = 0
  teacher: teacher_lib.TeacherConfig = dataclasses.field(
      default_factory=teacher_lib.TeacherConfig)
  teacher_cache: str = ""  # "" = ~/.cache/distill_jax/teachers
  recover: recover_lib.RecoverConfig = dataclasses.field(
      default_factory=recover_lib.RecoverConfig)
  jpeg_quality: int = 0  # > 0: JPEG round trip of the output (faithful).
  rded_factor: int = 1
  rded_crops: int = 5
  rded_candidates: int = 300
  gvbsm_pool: str = "convnet_bn,convnet_in,resnet_small,mlp"
  post: posttrain.PostTrainConfig = dataclasses.field(
      default_factory=posttrain.PostTrainConfig)
  eval_hard: bool = True
  eval_random: bool = True
  eval_metrics: bool = True
  cross_archs: str = ""  # e.g. "resnet_small": extra soft-label students.
  ssl: ssl_lib.SSLConfig = dataclasses.field(
      default_factory=ssl_lib.SSLConfig)

  def __post_init__(self):
    self.validate()

  def validate(self) -> "DecoupledConfig":
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r}; choose one of {METHODS}.")
    if self.data_source not in data_registry.DATA_SOURCES:
      raise ValueError(f"data_source={self.data_source!r}; choose one of "
                       f"{data_registry.DATA_SOURCES}.")
    if self.val_size < 1:
      raise ValueError(f"val_size={self.val_size}: post-train selects its "
                       "epoch on a validation split; set val_size > 0.")
    if self.rded_factor < 1 or self.rded_crops < 1 or \
        self.rded_candidates < self.ipc * self.rded_factor ** 2:
      raise ValueError("rded_factor and rded_crops must be >= 1 and "
                       "rded_candidates >= ipc * rded_factor^2.")
    if not 0 <= self.jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality={self.jpeg_quality} must be in "
                       "[0, 100] (0: off).")
    if self.method == "scdd" and (self.teacher.arch == "mlp" or (
        self.teacher.arch == "convnet_bn" and self.teacher.norm != "batch")):
      raise ValueError(f"scdd needs a BatchNorm teacher architecture (got "
                       f"teacher_arch={self.teacher.arch}, teacher_norm="
                       f"{self.teacher.norm}); use convnet_bn with norm "
                       "batch or a ResNet.")
    if self.method == "gvbsm":
      gvbsm.parse_pool(self.gvbsm_pool)
    self.recover_cfg()
    return self

  def teacher_cfg(self) -> teacher_lib.TeacherConfig:
    return dataclasses.replace(self.teacher, seed=self.seed)

  def ssl_cfg(self) -> ssl_lib.SSLConfig:
    return dataclasses.replace(self.ssl, seed=self.seed)

  def recover_cfg(self) -> recover_lib.RecoverConfig:
    method = self.method if self.method in recover_lib.METHODS else "sre2l"
    return dataclasses.replace(self.recover, method=method, ipc=self.ipc,
                               seed=self.seed)

  def post_cfg(self, **overrides) -> posttrain.PostTrainConfig:
    """The post-train protocol; loss "" is G-VBSM's mse_ce, else kl."""
    loss = self.post.loss or ("mse_ce" if self.method == "gvbsm" else "kl")
    return dataclasses.replace(
        self.post, seed=self.seed, loss=loss,
        eval_every=min(self.post.eval_every, self.post.epochs), **overrides)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  def flat(self) -> dict:
    """{flag name: value} of every field, stage fields prefixed."""
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in NESTED:
        prefix, from_run = NESTED[f.name]
        for g in dataclasses.fields(value):
          if g.name not in from_run:
            out[prefix + g.name] = getattr(value, g.name)
      else:
        out[f.name] = value
    return out

  def replace_flat(self, **overrides) -> "DecoupledConfig":
    """A copy with fields given by flag name (`--teacher_lr` -> teacher.lr);
    switching to method "scdd" adds `SCDD_RECOVER` where not given."""
    if overrides.get("method") == "scdd" and self.method != "scdd":
      overrides = {**SCDD_RECOVER, **overrides}
    known = self.flat()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
      raise ValueError(f"unknown DecoupledConfig fields {unknown}.")
    top, stages = {}, {k: {} for k in NESTED}
    for name, value in overrides.items():
      for stage, (prefix, from_run) in NESTED.items():
        sub = name[len(prefix):]
        if name.startswith(prefix) and sub not in from_run and sub in {
            g.name for g in dataclasses.fields(getattr(self, stage))}:
          stages[stage][sub] = value
          break
      else:
        top[name] = value
    for stage, changes in stages.items():
      if changes:
        top[stage] = dataclasses.replace(getattr(self, stage), **changes)
    return dataclasses.replace(self, **top)

  @classmethod
  def from_dict(cls, d: dict) -> "DecoupledConfig":
    """Inverse of `dataclasses.asdict` (config.json)."""
    kinds = {"teacher": teacher_lib.TeacherConfig,
             "recover": recover_lib.RecoverConfig,
             "post": posttrain.PostTrainConfig,
             "ssl": ssl_lib.SSLConfig}
    return cls(**{k: (kinds[k](**v) if k in kinds else v)
                  for k, v in d.items()})
