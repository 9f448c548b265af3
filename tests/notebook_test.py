"""The Colab notebook's code cells run in order, offline, on fake data.

The notebook is executed as written except for the literal edits in EDITS
(presets cut to seconds; IPython's display replaced by a recorder),
`/content/` paths moved to a temporary folder and shell lines (`!pip ...`)
skipped; each edit must still match, so a notebook that drifts from the
library fails here instead of on a user's runtime.
"""

import json
import pathlib

import numpy as np

from tests import test_utils

NOTEBOOK = (pathlib.Path(__file__).resolve().parents[1] / "experiments" /
            "colab_quickstart.ipynb")
EDITS = {
    "from IPython.display import Image, display": "",
    "dd_mnist_random.preset('default')": "dd_mnist_random.preset('smoke')",
    "num_inits=8": "num_inits=2",
    "rat_bptt_fashion.preset('gpu_ipc1'), outer_steps=2000":
        "rat_bptt_fashion.preset('smoke'), outer_steps=2",
}


def _code_cells() -> list[str]:
  nb = json.loads(NOTEBOOK.read_text())
  return ["".join(c["source"]) for c in nb["cells"]
          if c["cell_type"] == "code"]


def test_notebook_cells_run(tmp_path, monkeypatch):
  cells = _code_cells()
  whole = "\n".join(cells)
  for old in EDITS:
    assert old in whole, f"notebook no longer contains {old!r}"
  monkeypatch.setenv("DISTILL_JAX_DATA_DIR",
                     test_utils.write_fake_datasets(str(tmp_path / "data")))
  shown = []
  ns = {"Image": lambda path: pathlib.Path(path).read_bytes(),
        "display": shown.append}
  for cell in cells:
    code = "\n".join(l for l in cell.splitlines()
                     if not l.lstrip().startswith("!"))
    for old, new in EDITS.items():
      code = code.replace(old, new)
    code = code.replace("/content/", f"{tmp_path}/")
    exec(compile(code, str(NOTEBOOK), "exec"), ns)  # pylint: disable=exec-used
  # First/middle/last distilled steps and one RaT-BPTT image grid, as PNGs.
  assert len(shown) == len({0, ns["cfg"].steps // 2, ns["cfg"].steps - 1}) + 1
  assert all(png.startswith(b"\x89PNG") for png in shown)
  assert 0.0 <= ns["report"]["test_acc"]["mean"] <= 100.0
  assert ns["acc"].shape == (50,) and np.all(np.isfinite(ns["acc"]))
  assert 0.0 <= ns["rat_report"]["test_acc"]["mean"] <= 100.0
  assert ns["rat_report"]["selected_budget"] in ns["rcfg"].eval_budgets
