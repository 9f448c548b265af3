"""Mesh parsing and the refusal of counts the mesh does not divide."""

import jax
import pytest

from distill_jax import platform
from distill_jax.platform import mesh as sharding


def test_parse():
  assert sharding.parse("auto") is None
  assert sharding.parse("none") == {}
  assert sharding.parse("inits:4,data:2") == {"inits": 4, "data": 2}
  for bad in ("inits:0", "batch:2", "inits:x", "inits:2,inits:2"):
    with pytest.raises(ValueError, match="mesh="):
      sharding.parse(bad)
  with pytest.raises(ValueError, match="mesh="):
    platform.Platform(mesh="gpus:2")


def test_build_and_refusal():
  n = jax.device_count()
  assert sharding.build("none") is None
  with pytest.raises(ValueError, match=f"but there are {n}"):
    sharding.build(f"inits:{n + 1}")
  devices = [jax.devices()[0]] * 1
  assert sharding.build("auto", devices=devices) is None
  sharding.check_divisible(None, sharding.INITS, 3, "num_inits")  # no-op.
  assert sharding.pad_to(5, None, sharding.DATA) == 5
