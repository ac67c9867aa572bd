"""Writes kernels/params_*.cuh, the kernels' parameter structs, from flashcore_cupy/params.py
(the one declaration the launches pack from). Run after editing a schema; tests/test_params.py
checks that the headers are current."""

from pathlib import Path

from flashcore_cupy import params

KERNELS = Path(__file__).resolve().parent.parent / "kernels"

if __name__ == "__main__":
    for name in params.HEADERS:
        (KERNELS / name).write_text(params.render(name))
        print(f"wrote kernels/{name}")
