"""The benchmark as a script: same as `flashcore-cupy bench` (see --help)."""

from flashcore_cupy.cli import bench

if __name__ == "__main__":
    bench(prog_name="scripts/bench.py")
