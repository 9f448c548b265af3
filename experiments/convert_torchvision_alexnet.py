"""Converts torchvision's ImageNet AlexNet weights to a distill_jax .npz.

torch is needed only here (imported inside `read_state_dict`): install it
in a separate environment if the library's has none, e.g.
`pip install torch torchvision` in a venv under /tmp. Save the state dict
there once:

  python -c "import torch, torchvision; torch.save(torchvision.models.\\
alexnet(weights='IMAGENET1K_V1').state_dict(), '/tmp/alexnet.pth')"

then convert (torch must be importable by this command):

  python -m experiments.convert_torchvision_alexnet \\
      --state_dict=/tmp/alexnet.pth --out=/tmp/alexnet_imagenet.npz

The file is read with `torch.load(..., weights_only=True)` (no pickled
code runs). The conversion itself (`nn.alexnet.from_torchvision`) is a
pure function of a dict of numpy arrays: conv kernels OIHW -> HWIO, linear
weights transposed, and fc6's inputs reordered from torchvision's NCHW
flatten to the NHWC flatten of `nn.alexnet`. The result is checked against
the torchvision shapes (61,100,840 parameters) before it is written. Use
it with `python -m experiments.adapt_alexnet
--weights=/tmp/alexnet_imagenet.npz`.
Note torchvision's weights expect 224 px images normalised with the
ImageNet mean and std, which is what `data.voc_cub` does.
"""

import os

from absl import app
from absl import flags

from distill_jax.nn import alexnet
from experiments import common

_STATE_DICT = flags.DEFINE_string(
    "state_dict", None, "torchvision AlexNet state dict saved with "
    "torch.save (.pth)")
_OUT = flags.DEFINE_string("out", None, "output .npz of distill_jax AlexNet "
                           "parameters")


def read_state_dict(path: str) -> dict:
  """name -> numpy array of a torch.save'd state dict (needs torch)."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such state dict; save one with torch.save("
                     "torchvision.models.alexnet(weights=...).state_dict()).")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("reading a .pth needs torch: run this script in an "
                     "environment with torch installed (pip install torch)."
                     ) from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable torch state dict "
                     f"({type(e).__name__}).") from e
  if not isinstance(state, dict):
    raise ValueError(f"{path}: holds a {type(state).__name__}, not a state "
                     "dict; save model.state_dict().")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(state_dict: dict, out: str, width: int = 64) -> dict:
  """Converts, checks against torchvision's shapes (`width` 64, 1000
  classes) and writes `out`."""
  params = alexnet.check_params(
      alexnet.from_torchvision(state_dict),
      alexnet.shapes(alexnet.IMAGENET_CLASSES, width), "converted state dict")
  alexnet.save_params(out, params)
  return params


def main(argv):
  common.check_args(argv)
  if not _STATE_DICT.value or not _OUT.value:
    common.fail("--state_dict=FILE.pth and --out=FILE.npz are required.")
  try:
    convert(read_state_dict(_STATE_DICT.value), _OUT.value)
  except ValueError as e:
    common.fail(e)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
