"""Every notebook (notebooks/*.py, jupytext percent files) executes in a Jupyter kernel, from a working directory
outside the repository, and keeps showing figures after clipcore has trained and plotted in the same kernel."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_a_kernel(notebook, tmp_path):
    pytest.importorskip("nbconvert")
    pytest.importorskip("ipykernel")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # the kernel's own (inline) backend
    env.update(OMP_NUM_THREADS="1", GRAIN_NOTEBOOK_OUT=str(tmp_path / "out"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    out = tmp_path / f"{notebook.stem}.ipynb"
    proc = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--execute", "--run-path", str(tmp_path),
                           "-o", str(out), str(notebook)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = json.loads(out.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    shown = [i for i, c in enumerate(code) if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert shown, "no figure was displayed"
    if notebook.stem == "grain":     # figures drawn after clipcore.train ran in this kernel still show
        trained = next(i for i, c in enumerate(code) if "train(cfg)" in "".join(c["source"]))
        assert max(shown) > trained
