"""Execute a notebook's code cells in order in one namespace (what Jupyter's kernel does, without
needing Jupyter: the device image has no nbclient) and write it back with its outputs: each
cell's stdout and stderr as a stream, each matplotlib figure it left open as an image/png
display, and the error of a cell that raises (then stop, exit 1). The GPU suite runs it on
examples/quickstart.ipynb.

  python3 scripts/run_notebook.py examples/quickstart.ipynb --out $OUT/quickstart.ipynb
"""

import argparse
import base64
import contextlib
import io
import json
import sys
import traceback


def run(path: str, out_path: str) -> int:
    import os
    import tempfile

    import matplotlib

    # the notebook's `tune` writes the tune cache dispatch reads: a run here leaves the
    # machine's own alone (FLASHCORE_CUPY_TUNE_CACHE, unless the caller set it)
    os.environ.setdefault("FLASHCORE_CUPY_TUNE_CACHE", os.path.join(tempfile.mkdtemp(), "tune.json"))

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = json.load(open(path))
    namespace: dict = {"__name__": "__main__"}
    plt.show = lambda *a, **k: None   # figures are collected after each cell
    failed, count = False, 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        count += 1
        cell["execution_count"], cell["outputs"] = count, []
        stdout, stderr = io.StringIO(), io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                exec(compile("".join(cell["source"]), f"<cell {count}>", "exec"), namespace)
        except Exception as e:   # noqa: BLE001 -- recorded in the notebook, then the run stops
            error = e
        for name, text in (("stdout", stdout.getvalue()), ("stderr", stderr.getvalue())):
            if text:
                cell["outputs"].append(dict(output_type="stream", name=name, text=text.splitlines(keepends=True)))
        for number in plt.get_fignums():
            png = io.BytesIO()
            plt.figure(number).savefig(png, format="png", dpi=90, bbox_inches="tight")
            cell["outputs"].append(dict(output_type="display_data", metadata={},
                                        data={"image/png": base64.b64encode(png.getvalue()).decode(),
                                              "text/plain": ["<Figure>"]}))
        plt.close("all")
        if error is not None:
            cell["outputs"].append(dict(output_type="error", ename=type(error).__name__, evalue=str(error),
                                        traceback=traceback.format_exception(error)))
            print(f"cell {count} raised {type(error).__name__}: {error}", file=sys.stderr)
            failed = True
            break
        print(f"cell {count}: ok")
    json.dump(nb, open(out_path, "w"), indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("notebook")
    ap.add_argument("--out", help="where to write it with its outputs (default: in place)")
    args = ap.parse_args()
    sys.exit(run(args.notebook, args.out or args.notebook))
