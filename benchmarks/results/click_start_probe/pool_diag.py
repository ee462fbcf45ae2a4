"""stall_diag.py over the pool split (thirtieth session; diagnosis only): effort.split_ids patched to return the pool's
ids, so no val/test image is read. python pool_diag.py --data DATA --model RUN --split val --starts proposal --json F"""
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[2] / "benchmarks")]
import effort  # noqa: E402

split_ids = effort.split_ids
effort.split_ids = lambda data, split: split_ids(data, "pool")
runpy.run_path(str(HERE / "stall_diag.py"), run_name="__main__")
