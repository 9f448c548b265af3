"""AlexNet in the torchvision layout (NHWC), and its pretrained weights.

The network of `torchvision.models.alexnet` (the one ImageNet-pretrained
AlexNet of Dataset Distillation's Table 3), with every width scaled by
`width / 64` (width 64 is torchvision's, 61,100,840 parameters with 1000
classes):

  conv1 64@11x11 stride 4 pad 2 -> ReLU -> max-pool 3/2
  conv2 192@5x5 pad 2 -> ReLU -> max-pool 3/2
  conv3 384@3x3 pad 1 -> ReLU, conv4 256@3x3 -> ReLU, conv5 256@3x3 -> ReLU
  max-pool 3/2 -> adaptive average pool to 6x6 -> flatten (H, W, C order)
  fc6 4096 -> ReLU, fc7 4096 -> ReLU, fc8 classes.

The dropout layers of torchvision's classifier are left out: `Model.apply`
has no train flag, so the network is what torchvision computes in eval
mode, during distillation, baselines and fine-tuning alike. Inputs are at
least 63 pixels a side (the last max-pool needs 3x3); 224 is ImageNet's.

Parameters are {"conv1": {"kernel" (HWIO), "bias"}, ..., "fc8": {"kernel"
(in, out), "bias"}}. `from_torchvision` converts a torchvision state dict
(a dict of numpy arrays) to them; `save_params` / `load_params` read and
write them as an .npz (keys "conv1/kernel", ...) or flax msgpack file, and
`check_params` says what is wrong with a foreign or corrupt one.
"""

import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.nn import layers
from distill_jax.nn import models

TORCHVISION_PARAMS = 61_100_840  # torchvision alexnet(), 1000 classes.
# ImageNet-1k validation top-1 (%) torchvision states for IMAGENET1K_V1.
TORCHVISION_TOP1 = 56.522
IMAGENET_CLASSES = 1000
MIN_SIZE = 63
CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FCS = ("fc6", "fc7", "fc8")
# torchvision state-dict prefix of each layer.
TORCH_NAMES = {"conv1": "features.0", "conv2": "features.3",
               "conv3": "features.6", "conv4": "features.8",
               "conv5": "features.10", "fc6": "classifier.1",
               "fc7": "classifier.4", "fc8": "classifier.6"}
POOLED = 6  # the adaptive average pool's output side.


def widths(width: int) -> tuple[tuple[int, ...], int]:
  """(conv channels of conv1..conv5, fc6/fc7 units) for `width`."""
  if width < 1:
    raise ValueError(f"alexnet width={width} must be >= 1 (64 = torchvision).")
  convs = tuple(max(1, c * width // 64) for c in (64, 192, 384, 256, 256))
  return convs, max(1, 4096 * width // 64)


def _pool_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) averaging matrix of PyTorch's adaptive average pool: bin i
  averages [floor(i * size / out), ceil((i + 1) * size / out))."""
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jax.Array, out: int = POOLED) -> jax.Array:
  """`torch.nn.AdaptiveAvgPool2d(out)` on NHWC input (two small matmuls)."""
  rows = jnp.asarray(_pool_matrix(x.shape[1], out), x.dtype)
  cols = jnp.asarray(_pool_matrix(x.shape[2], out), x.dtype)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ih,nhwc->niwc", rows, x, precision=hp)
  return jnp.einsum("jw,niwc->nijc", cols, x, precision=hp)


def _max_pool_3_2(x):
  """`MaxPool2d(3, 2)` (no padding)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), "VALID")


def _kernel_init(name: str):
  """`models.kernel_init(name)` (the same fans: receptive field x channels)
  drawn as (KH*KW, C_in, C_out) and reshaped: XLA:CPU compiles JAX's
  threefry sampling of 4-D shapes very slowly (8 s instead of 1 s each)."""
  base = models.kernel_init(name)

  def init(key, shape, dtype=jnp.float32):
    return base(key, (shape[0] * shape[1], *shape[2:]), dtype).reshape(shape)
  return init


class Conv(nn.Module):
  """Convolution with stride (`lax.conv_general_dilated`) or without
  (`layers.conv2d`, the backend-tuned one)."""
  features: int
  kernel: int
  stride: int
  padding: int
  init_name: str = "torch"

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    w = self.param("kernel", _kernel_init(self.init_name),
                   (self.kernel, self.kernel, cin, self.features))
    fan_in = cin * self.kernel * self.kernel
    b = self.param("bias", lambda k, s: models.bias_init(self.init_name)(
        k, s, fan_in=fan_in), (self.features,))
    if self.stride == 1:
      y = layers.conv2d(x, w.astype(x.dtype), None, padding=self.padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, w.astype(x.dtype), (self.stride, self.stride),
          [(self.padding, self.padding)] * 2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b.reshape(1, 1, 1, -1)


class AlexNet(nn.Module):
  """torchvision's AlexNet, widths scaled by `width / 64` (module doc)."""
  num_classes: int
  width: int = 64
  init_name: str = "torch"

  @nn.compact
  def __call__(self, x):
    convs, hidden = widths(self.width)
    x = nn.relu(Conv(convs[0], 11, 4, 2, self.init_name, name="conv1")(x))
    x = _max_pool_3_2(x)
    x = nn.relu(Conv(convs[1], 5, 1, 2, self.init_name, name="conv2")(x))
    x = _max_pool_3_2(x)
    for i, c in enumerate(convs[2:], start=3):
      x = nn.relu(Conv(c, 3, 1, 1, self.init_name, name=f"conv{i}")(x))
    x = adaptive_avg_pool(_max_pool_3_2(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(models.Dense(hidden, self.init_name, name="fc6")(x))
    x = nn.relu(models.Dense(hidden, self.init_name, name="fc7")(x))
    return models.Dense(self.num_classes, self.init_name, name="fc8")(x)


def build(num_classes: int, image_shape, width: int = 64,
          init_name: str = "torch") -> models.Model:
  """The AlexNet `models.Model` for images of `image_shape` (H, W, C)."""
  if min(image_shape[:2]) < MIN_SIZE:
    raise ValueError(f"alexnet needs images of at least {MIN_SIZE}x{MIN_SIZE}"
                     f" pixels, got {tuple(image_shape)}; set --image_size "
                     "(224 for ImageNet weights).")
  widths(width)
  module = AlexNet(num_classes, width, init_name)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  return models.Model(init=jax.jit(lambda key: module.init(key, dummy)[
      "params"]),
                      apply=lambda p, x: module.apply({"params": p}, x),
                      name="alexnet")


def shapes(num_classes: int, width: int = 64, image_size: int = 224) -> dict:
  """The parameter shapes, computed without allocating (`jax.eval_shape`)."""
  model = build(num_classes, (image_size, image_size, 3), width)
  return jax.tree.map(lambda s: tuple(s.shape),
                      jax.eval_shape(model.init, jax.random.key(0)))


def replace_head(params: dict, key: jax.Array, num_classes: int,
                 init_name: str = "torch") -> dict:
  """`params` with fc8 re-initialised for `num_classes` outputs."""
  fan_in = params["fc8"]["kernel"].shape[0]
  head = models.Dense(num_classes, init_name).init(
      key, jnp.zeros((1, fan_in), jnp.float32))["params"]
  return {**params, "fc8": head}


def from_torchvision(state_dict: dict) -> dict:
  """Converts a torchvision AlexNet state dict to these parameters.

  Args:
    state_dict: name -> array ("features.0.weight", ...), numpy arrays
      (`tensor.numpy()`); extra entries are ignored.

  Returns:
    The parameters: conv kernels OIHW -> HWIO, linear weights (out, in) ->
    (in, out); fc6's input axis reordered from torchvision's NCHW flatten
    (c, h, w) to this network's NHWC flatten (h, w, c).

  Raises:
    ValueError: a missing entry or a weight that is not 4-D / 2-D.
  """
  missing = [f"{TORCH_NAMES[n]}.{s}" for n in CONVS + FCS
             for s in ("weight", "bias") if f"{TORCH_NAMES[n]}.{s}" not in
             state_dict]
  if missing:
    raise ValueError(f"not a torchvision AlexNet state dict: missing "
                     f"{', '.join(missing[:4])}; pass the state dict of "
                     "torchvision.models.alexnet.")
  params = {}
  for name in CONVS + FCS:
    w = np.asarray(state_dict[TORCH_NAMES[name] + ".weight"], np.float32)
    b = np.asarray(state_dict[TORCH_NAMES[name] + ".bias"], np.float32)
    if w.ndim != (4 if name in CONVS else 2):
      raise ValueError(f"{TORCH_NAMES[name]}.weight has shape {w.shape}; "
                       "not a torchvision AlexNet state dict.")
    if name in CONVS:
      w = w.transpose(2, 3, 1, 0)
    elif name == "fc6":
      c = w.shape[1] // (POOLED * POOLED)
      w = w.reshape(w.shape[0], c, POOLED, POOLED).transpose(2, 3, 1, 0)
      w = w.reshape(-1, w.shape[-1])
    else:
      w = w.T
    params[name] = {"kernel": np.ascontiguousarray(w), "bias": b}
  return params


def check_params(params, expected: dict, path: str) -> dict:
  """Raises a one-line ValueError unless `params` has `expected`'s shapes."""
  if not isinstance(params, dict):
    raise ValueError(f"{path}: not an AlexNet parameter file.")
  flat = {f"{k}/{s}": v for k, d in params.items() if isinstance(d, dict)
          for s, v in d.items()}
  want = {f"{k}/{s}": v for k, d in expected.items() for s, v in d.items()}
  missing = sorted(set(want) - set(flat))
  if missing:
    raise ValueError(f"{path}: not AlexNet weights: missing "
                     f"{', '.join(missing[:4])} (convert torchvision weights "
                     "with experiments/convert_torchvision_alexnet.py).")
  wrong = [f"{k} {tuple(np.shape(flat[k]))} != {want[k]}" for k in sorted(want)
           if tuple(np.shape(flat[k])) != tuple(want[k])]
  if wrong:
    raise ValueError(f"{path}: AlexNet weights of the wrong shape: "
                     f"{'; '.join(wrong[:3])} (is --width right? 64 is "
                     "torchvision's).")
  return {k: {s: jnp.asarray(np.asarray(flat[f"{k}/{s}"], np.float32))
              for s in d} for k, d in expected.items()}


def save_params(path: str, params: dict) -> None:
  """Writes `params` as an .npz ("conv1/kernel", ...) atomically."""
  from distill_jax.run import storage  # pylint: disable=g-import-not-at-top
  flat = {f"{k}/{s}": np.asarray(v) for k, d in params.items()
          for s, v in d.items()}
  storage.atomic_write(path, lambda f: np.savez(f, **flat))


def load_params(path: str, expected: dict) -> dict:
  """Reads an .npz or flax msgpack parameter file, checked against the
  `expected` shapes (`shapes`); one-line ValueError if it is missing,
  unreadable, foreign or of the wrong shapes."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such weight file; pass --weights=FILE.npz "
                     "(experiments/convert_torchvision_alexnet.py writes "
                     "one).")
  if path.endswith(".msgpack"):
    try:
      with open(path, "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a readable flax msgpack file "
                       f"({type(e).__name__}).") from e
    params = params.get("params", params) if isinstance(params, dict) else None
  else:
    try:
      with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a readable .npz weight file "
                       f"({type(e).__name__}).") from e
    params = {}
    for key, value in files.items():
      layer, _, leaf = key.partition("/")
      params.setdefault(layer, {})[leaf] = value
  return check_params(params, expected, path)
