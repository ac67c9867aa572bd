"""examples/quickstart.ipynb on the CPU: valid nbformat 4, every code cell compiles, and it
covers what a new user needs first. Executing it needs a GPU: scripts/gpu_suite.sh runs it with
scripts/run_notebook.py, which fails on any error."""

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def _cells():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    return nb["cells"]


def test_the_quickstart_parses_and_its_code_compiles():
    code = [c for c in _cells() if c["cell_type"] == "code"]
    assert len(code) >= 6
    for i, cell in enumerate(code):
        compile("".join(cell["source"]), f"quickstart cell {i}", "exec")   # a SyntaxError fails here
        assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), f"cell {i} kept an error"


def test_the_quickstart_covers_the_first_steps():
    text = "".join("".join(c["source"]) for c in _cells())
    for needle in ('"info"', "fc.attention(", "reference.attention", "rel_error", "from_dlpack",
                   "flashcore_cupy.torch", "window=", "attention_varlen", "naive.attention",
                   "scaled_dot_product_attention", "plt.", '"warmup"', '"tune"'):
        assert needle in text, needle


def test_the_notebook_runner_records_outputs_and_stops_at_an_error(tmp_path):
    import importlib.util
    import pytest

    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("run_notebook", NOTEBOOK.parent.parent / "scripts" / "run_notebook.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    cells = [dict(cell_type="code", metadata={}, source=["x = 6 * 7\n", "print(x)\n"], outputs=[], execution_count=None),
             dict(cell_type="code", metadata={}, source=["import matplotlib.pyplot as plt\n", "plt.plot([1, 2])\n"],
                  outputs=[], execution_count=None),
             dict(cell_type="code", metadata={}, source=["raise ValueError('boom')\n"], outputs=[], execution_count=None),
             dict(cell_type="code", metadata={}, source=["print('never')\n"], outputs=[], execution_count=None)]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)))
    assert runner.run(str(path), str(path)) == 1
    done = json.loads(path.read_text())["cells"]
    assert done[0]["outputs"][0]["text"] == ["42\n"]
    assert done[1]["outputs"][0]["data"]["image/png"]
    assert done[2]["outputs"][-1]["ename"] == "ValueError"
    assert done[3]["outputs"] == []
