"""An evaluation pass per image with (argv 1 = 1) or without (0) explicit mallopt calls; run before `import model` set
them itself (nineteenth session).

    python benchmarks/results/decode_speed_probe/dec_malloc.py 0|1 RUN/model.pt
"""
import sys, ctypes, time, statistics
if sys.argv[1] == "1":
    libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 2**30)
MODEL = sys.argv[2]  # a model.pt of `adasam train` (the session: seed 0 default)
from probe_setup import model_and_val
from model.evaluate import evaluate
model, val = model_and_val(MODEL, 32)
ts = []
for _ in range(3):
    t = time.perf_counter(); evaluate(model, val, with_hd95=False); ts.append(time.perf_counter() - t)
print("mallopt" if sys.argv[1] == "1" else "default", "eval per image", round(statistics.median(ts) / len(val), 4))
