"""Decoder speed, eager against torch.compile(dynamic=True), per image at batch 8 / 6 / 1, and a training step's
decoder part (nineteenth session).

    python benchmarks/results/decode_speed_probe/dec_bench2.py RUN/model.pt
"""
import statistics
import sys
import time

from probe_setup import model_and_val
import torch

MODEL = sys.argv[1]  # a model.pt of `adasam train` (the session: seed 0 default)
from model.evaluate import batch_inputs
from model.decoder import decode
model, val = model_and_val(MODEL, 16)
emb, geos, imgs = batch_inputs(val[:8])
md, pe = model.backbone.mask_decoder, model.backbone.prompt_encoder
def med(f, n=5):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
boxes = torch.tensor([[40., 40., 160., 150.]] * 8)
with torch.no_grad():
    feats = model.features(emb)
    cdec = torch.compile(decode, dynamic=True)
    t = time.perf_counter(); cdec(md, pe, feats, boxes); print("dyn compile s", time.perf_counter() - t)
    for b in (8, 6, 1):
        e = med(lambda: decode(md, pe, feats[:b], boxes[:b])) / b
        t = time.perf_counter(); cdec(md, pe, feats[:b], boxes[:b]); first = time.perf_counter() - t
        c = med(lambda: cdec(md, pe, feats[:b], boxes[:b])) / b
        print(f"batch {b}: eager {e:.4f} dyn-compiled {c:.4f} first call {first:.2f}")
# training: grads into features, decoder frozen
md.requires_grad_(False)
tdec = torch.compile(decode, dynamic=True)
f2 = model.features(emb[:2]).detach().requires_grad_(True)
def step(fn):
    logits, _ = fn(md, pe, f2, boxes[:2]); logits.square().mean().backward()
t = time.perf_counter(); step(tdec); print("train compile s", time.perf_counter() - t)
print("train eager", med(lambda: step(decode)), "compiled", med(lambda: step(tdec)))
