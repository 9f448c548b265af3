"""Networks with BatchNorm running statistics, as pure (init, apply) pairs.

The decoupled distillation methods (SRe2L, CDA, DELT, G-VBSM) train a
teacher on real data, then optimise synthetic pixels so the frozen teacher,
in eval mode, sees BatchNorm-input moments equal to its running statistics.
`build(spec)` returns a `StatModel`:

  variables = model.init(key)  # {"params": ..., "batch_stats": ...}
  logits, aux = model.apply(variables, x, train=False)
  aux["batch_stats"]  # updated running stats (train=True) or the input's
  aux["running"]      # ((running mean, running var), ...) of the same BN
                      # layers, in the same forward order;
  aux["moments"]      # ((mean (C,), biased var (C,)), ...) of each BN input,
                      # in forward order, in both modes
  aux["features"]     # penultimate features (N, F)
  aux["conv_inputs"]  # the input of every conv (N, H, W, C), or of every
                      # linear layer of an MLP (the image (N, H, W, C),
                      # then (N, D)), in forward order (G-VBSM's hooks)

`apply` is a pure function of (variables, x): it can be jitted (`train` is a
static Python bool), vmapped over a leading axis of x, and differentiated
with respect to x or the parameters.

Architectures (NHWC inputs, any number of classes and input channels):
  * `convnet_bn`: the DC ConvNet (`VICO-UoE/DatasetCondensation`
    `networks.py`; RDED and DELT use the same): `depth` blocks of conv 3x3
    (`width` channels, bias) -> norm -> ReLU -> avg-pool 2, flatten, linear.
    `norm` is "batch" (BatchNorm with running statistics), "instance"
    (per-image, per-channel, affine: PyTorch GroupNorm(C, C)) or "none";
    only "batch" has statistics (arch "convnet_in" in `spec_for` is this
    ConvNet with instance norm, G-VBSM's ConvNetW128). `first_pad` is the padding of the first
    conv: default 3 for 28x28x1 inputs (28 px -> 32 px maps, 4x4 after three
    pools, as DC/RDED/DELT do for every 1-channel input) and 1 otherwise.
  * `resnet_small`: a CIFAR-style ResNet with one BasicBlock per stage and
    `depth` stages of widths `width * 2**i` (stride 2 from the second
    stage); depth 3, width 16 is ResNet-8 (16/32/64), depth 4 ResNet-10.
  * `resnet18`: torchvision's ResNet-18 with the CIFAR stem used by SRe2L,
    RDED and DELT (conv1 3x3 stride 1, no max-pool), BasicBlocks [2, 2, 2, 2]
    of widths 64/128/256/512 (`width` = 64 scales them); 11,173,962
    parameters for 10 classes.
  ResNets follow torchvision: convs without bias, BN after every conv,
  1x1-conv + BN shortcut where the shape changes, shortcut computed after
  the main path (so forward order of the BN layers equals torchvision's
  module order), global average pool, linear head.
  * `mlp`: flatten -> `depth` hidden layers of `width` units with ReLU ->
    linear (no BN; a G-VBSM-style heterogeneous teacher).

Initialisers (`init`): config.INITS ("xavier", "he", "lecun", "torch"), and
for the ResNets also "he_fan_out" (torchvision's kaiming_normal_(mode=
"fan_out") for convs, PyTorch's default for the linear head). Defaults:
"torch" (PyTorch's layer default) for convnet_bn and mlp, "he_fan_out" for
the ResNets. BN scale 1, bias 0, running mean 0, running var 1.
"""

import functools
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax.nn import layers
from distill_jax.nn import models
from distill_jax.nn.batchnorm import BatchNorm
from distill_jax.nn.models import Conv, Dense, kernel_init

ARCHS = ("convnet_bn", "resnet_small", "resnet18", "mlp")
NORMS = ("batch", "instance", "none")
INITS = tuple(config_lib.INITS) + ("he_fan_out",)
FIELDS = ("arch", "num_classes", "image_shape", "width", "depth", "norm",
          "first_pad", "init")


class StatModel(NamedTuple):
  """A network with BatchNorm state as two pure functions.

  Attributes:
    init: `init(key) -> {"params": ..., "batch_stats": ...}` ("batch_stats"
      is {} for networks without BatchNorm).
    apply: `apply(variables, x, *, train=False) -> (logits, aux)`, aux a
      dict with "batch_stats", "moments", "running" and "features"
      (module docstring).
    name: architecture name.
    spec: the complete JSON-serialisable recipe; `build(spec)` rebuilds it.
  """
  init: Callable[[jax.Array], dict]
  apply: Callable[..., tuple[jax.Array, dict]]
  name: str
  spec: dict


def _kernel_init(name: str):
  if name == "he_fan_out":
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  return kernel_init(name)


def _conv_strided(x, w, stride: int, padding: int):
  """Convolution with stride and symmetric padding, no bias (NHWC x HWIO).

  Stride 1 uses the backend-tuned `layers.conv2d`, and so does a 1x1 kernel
  with no padding (subsample x by the stride, then a 1x1 stride-1 conv: the
  same function). Other strided convolutions (the 3x3 stride-2 convs of the
  ResNets) are `lax.conv_general_dilated` on GPU/TPU and, on CPU, an im2col
  with strided slices and one GEMM: its gradients are GEMMs and (interior-)
  pads. Measured on 2-core XLA:CPU (ResNet-18 at width 16, 32x32x3, batch
  32; ResNet-8 alike): same speed as `lax.conv_general_dilated` for one
  jitted forward + gradient, but inside `lax.scan` 5 parameter-gradient
  steps took 556 ms instead of 1460-1670 ms (XLA:CPU runs the transposed
  strided conv of the kernel gradient slowly in loops, see `layers`), and 5
  input-gradient steps 370-480 ms instead of 420-560 ms. Stride-1
  `conv2d` followed by subsampling (4x the work) was slower outside loops.
  """
  if stride == 1:
    return layers.conv2d(x, w, None, padding=padding)
  kh, kw, ci, co = w.shape
  if kh == 1 and kw == 1 and padding == 0:
    return layers.conv2d(x[:, ::stride, ::stride, :], w, None, padding=0)
  pads = ((padding, padding), (padding, padding))
  if jax.default_backend() != "cpu":
    return lax.conv_general_dilated(x, w, (stride, stride), pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  cols = [x[:, i:i + stride * (ho - 1) + 1:stride,
            j:j + stride * (wo - 1) + 1:stride, :]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1)  # (n, ho, wo, kh*kw*ci)
  return lax.dot_general(patches, w.reshape(kh * kw * ci, co),
                         (((3,), (0,)), ((), ())))


class ConvNoBias(nn.Module):
  """Convolution without bias and with optional stride (ResNets)."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  init_name: str = "he_fan_out"

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", _kernel_init(self.init_name),
                   (self.kernel, self.kernel, x.shape[-1], self.features))
    return _conv_strided(x, w, self.stride, self.padding)


class ConvNetBN(nn.Module):
  """DC ConvNet with BatchNorm (running statistics), instance norm or none."""
  num_classes: int
  width: int
  depth: int
  norm: str
  first_pad: int
  init_name: str

  @nn.compact
  def __call__(self, x, train: bool):
    moments, conv_in = [], []
    for d in range(self.depth):
      pad = self.first_pad if d == 0 else 1
      conv_in.append(x)
      x = Conv(self.width, 3, pad, self.init_name)(x)
      if self.norm == "batch":
        x, mom = BatchNorm()(x, train)
        moments.append(mom)
      else:
        x = models.Norm(self.norm)(x)
      x = layers.avg_pool(nn.relu(x), 2)
    feats = x.reshape(x.shape[0], -1)
    return (Dense(self.num_classes, self.init_name)(feats), tuple(moments),
            feats, tuple(conv_in))


class BasicBlock(nn.Module):
  """torchvision BasicBlock: conv-BN-ReLU-conv-BN plus shortcut, ReLU."""
  features: int
  stride: int
  init_name: str

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(ConvNoBias, init_name=self.init_name)
    y = conv(self.features, 3, self.stride, 1)(x)
    y, m1 = BatchNorm()(y, train)
    conv_in = [x, nn.relu(y)]
    y = conv(self.features, 3, 1, 1)(conv_in[1])
    y, m2 = BatchNorm()(y, train)
    moments = [m1, m2]
    if self.stride != 1 or x.shape[-1] != self.features:
      conv_in.append(x)
      x = conv(self.features, 1, self.stride, 0)(x)
      x, m3 = BatchNorm()(x, train)
      moments.append(m3)
    return nn.relu(y + x), moments, conv_in


class ResNet(nn.Module):
  """CIFAR-stem ResNet of BasicBlocks (`stage_blocks` blocks per stage)."""
  num_classes: int
  width: int
  stage_blocks: tuple[int, ...]
  init_name: str

  @nn.compact
  def __call__(self, x, train: bool):
    conv_in = [x]
    x = ConvNoBias(self.width, 3, 1, 1, self.init_name)(x)
    x, mom = BatchNorm()(x, train)
    moments = [mom]
    x = nn.relu(x)
    for i, blocks in enumerate(self.stage_blocks):
      for b in range(blocks):
        stride = 2 if i > 0 and b == 0 else 1
        x, mom, ins = BasicBlock(self.width * 2**i, stride, self.init_name)(
            x, train)
        moments.extend(mom)
        conv_in.extend(ins)
    feats = jnp.mean(x, axis=(1, 2))
    head_init = "torch" if self.init_name == "he_fan_out" else self.init_name
    logits = Dense(self.num_classes, head_init)(feats)
    return logits, tuple(moments), feats, tuple(conv_in)


class MLP(nn.Module):
  """Flatten, `depth` ReLU layers of `width` units, linear head."""
  num_classes: int
  width: int
  depth: int
  init_name: str

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    conv_in = [x]  # the first layer's input, as an image.
    x = x.reshape(x.shape[0], -1)
    for d in range(self.depth):
      if d:
        conv_in.append(x)
      x = nn.relu(Dense(self.width, self.init_name)(x))
    return (Dense(self.num_classes, self.init_name)(x), (), x,
            tuple(conv_in))


_DEFAULTS = {
    "convnet_bn": dict(width=128, depth=3, norm="batch", init="torch"),
    "resnet_small": dict(width=16, depth=3, norm="batch", init="he_fan_out"),
    "resnet18": dict(width=64, depth=None, norm="batch", init="he_fan_out"),
    "mlp": dict(width=128, depth=2, norm="none", init="torch"),
}


def _fail(field: str, value, allowed: str):
  raise ValueError(f"{field}={value!r} is invalid; {allowed}.")


def _positive_int(field: str, value, minimum: int = 1) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    _fail(field, value, f"expected an integer >= {minimum}")
  return int(value)


def _convnet_map_size(size: int, first_pad: int, depth: int) -> int:
  """Side of convnet_bn's last feature map (< 1: the image is too small)."""
  size = size + 2 * first_pad - 2  # Later 3x3 convs (padding 1) keep it.
  for _ in range(depth):
    size //= 2
  return size


def resolve_spec(spec: Mapping[str, Any] | None = None, **kwargs) -> dict:
  """Validates a recipe and fills in the architecture's defaults.

  Args:
    spec: a dict of `FIELDS` (e.g. a `StatModel.spec`); `kwargs` override it.
    **kwargs: fields.

  Returns:
    The complete spec: every field of `FIELDS`, None where it does not apply
    to the architecture.

  Raises:
    ValueError: naming the bad field and the allowed values.
  """
  spec = {**(dict(spec) if spec else {}), **kwargs}
  unknown = sorted(set(spec) - set(FIELDS))
  if unknown:
    _fail(unknown[0], spec[unknown[0]], f"fields are {', '.join(FIELDS)}")
  arch = spec.get("arch")
  if arch not in ARCHS:
    _fail("arch", arch, f"choose from {', '.join(ARCHS)}")
  out = {"arch": arch, **_DEFAULTS[arch]}
  out.update({k: v for k, v in spec.items() if v is not None})
  if spec.get("num_classes") is None:
    _fail("num_classes", None, "expected an integer >= 1")
  out["num_classes"] = _positive_int("num_classes", out["num_classes"])
  shape = spec.get("image_shape")
  if (not isinstance(shape, (tuple, list)) or len(shape) != 3 or any(
      isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
      for s in shape)):
    _fail("image_shape", shape, "expected (height, width, channels), "
          "positive integers")
  shape = tuple(int(s) for s in shape)
  out["image_shape"] = shape
  out["width"] = _positive_int("width", out["width"])
  if arch == "resnet18":
    if spec.get("depth") is not None:
      _fail("depth", spec["depth"], "resnet18 has fixed depth; leave it None")
  else:
    out["depth"] = _positive_int("depth", out["depth"])
  allowed_norms = NORMS if arch == "convnet_bn" else (_DEFAULTS[arch]["norm"],)
  if out["norm"] not in allowed_norms:
    _fail("norm", out["norm"], f"{arch} allows {', '.join(allowed_norms)}")
  inits = INITS if arch.startswith("resnet") else config_lib.INITS
  if out["init"] not in inits:
    _fail("init", out["init"], f"{arch} allows {', '.join(inits)}")
  h, w = shape[:2]
  if arch == "convnet_bn":
    default_pad = 3 if shape == (28, 28, 1) else 1
    pad = spec.get("first_pad")
    out["first_pad"] = (default_pad if pad is None else
                        _positive_int("first_pad", pad, 0))
    if min(_convnet_map_size(s, out["first_pad"], out["depth"])
           for s in (h, w)) < 1:
      _fail("image_shape", shape, f"too small for convnet_bn depth "
            f"{out['depth']} with first_pad {out['first_pad']}: every "
            "avg-pool needs a map of at least 2 px")
  else:
    if spec.get("first_pad") is not None:
      _fail("first_pad", spec["first_pad"], "only convnet_bn has first_pad")
    out["first_pad"] = None
  if arch in ("resnet_small", "resnet18"):
    stages = 4 if arch == "resnet18" else out["depth"]
    if min(h, w) < 2**(stages - 1):
      _fail("image_shape", shape, f"{arch} with {stages} stages needs images "
            f"of at least {2**(stages - 1)} px")
  return {k: out[k] for k in FIELDS}


def _module(spec: dict) -> nn.Module:
  arch, c, init = spec["arch"], spec["num_classes"], spec["init"]
  if arch == "convnet_bn":
    return ConvNetBN(c, spec["width"], spec["depth"], spec["norm"],
                     spec["first_pad"], init)
  if arch == "resnet_small":
    return ResNet(c, spec["width"], (1,) * spec["depth"], init)
  if arch == "resnet18":
    return ResNet(c, spec["width"], (2, 2, 2, 2), init)
  return MLP(c, spec["width"], spec["depth"], init)


def spec_for(arch: str, *, width: int, depth: int, num_classes: int,
             image_shape, norm: str = "batch") -> dict:
  """A spec from the usual (arch, width, depth) fields, keeping only those
  the architecture takes (ResNet-18 has a fixed depth; only the ConvNet
  has a norm choice; "convnet_in" is convnet_bn with instance norm)."""
  if arch == "convnet_in":
    arch, norm = "convnet_bn", "instance"
  spec = {"arch": arch, "width": width, "num_classes": num_classes,
          "image_shape": tuple(image_shape)}
  if arch != "resnet18":
    spec["depth"] = depth
  if arch == "convnet_bn":
    spec["norm"] = norm
  return spec


def build(spec: Mapping[str, Any] | None = None, **kwargs) -> StatModel:
  """Builds the `StatModel` a recipe describes.

  Args:
    spec: a dict of fields (`FIELDS`): arch (one of `ARCHS`), num_classes,
      image_shape (H, W, C), and optionally width, depth, norm, first_pad,
      init (defaults per architecture, module docstring).
    **kwargs: fields, overriding `spec`.

  Returns:
    A `StatModel`; its `spec` is the complete, validated recipe.

  Raises:
    ValueError: for an unknown or invalid field (the message names it).
  """
  spec = resolve_spec(spec, **kwargs)
  module = _module(spec)
  dummy = jnp.zeros((2, *spec["image_shape"]), jnp.float32)

  def init(key: jax.Array) -> dict:
    variables = module.init(key, dummy, False)
    return {"params": variables["params"],
            "batch_stats": variables.get("batch_stats", {})}

  def apply(variables: dict, x: jax.Array, *, train: bool = False):
    stats = variables.get("batch_stats", {})
    inputs = {"params": variables["params"]}
    if stats:
      inputs["batch_stats"] = stats
    if train and stats:
      (logits, layers_, feats, conv_in), state = module.apply(
          inputs, x, True, mutable=["batch_stats"])
      stats = state["batch_stats"]
    else:
      logits, layers_, feats, conv_in = module.apply(inputs, x, train)
    moments = tuple(m for m, _ in layers_)
    running = tuple(r for _, r in layers_)
    return logits, {"batch_stats": stats, "moments": moments,
                    "running": running,
                    "features": feats, "conv_inputs": conv_in}

  return StatModel(init=init, apply=apply, name=spec["arch"], spec=spec)


def num_params(variables) -> int:
  """Number of trainable parameters (of variables["params"] if present)."""
  if isinstance(variables, Mapping) and "params" in variables:
    variables = variables["params"]
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
