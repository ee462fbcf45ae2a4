"""The image view's U-Net (128 px, batch 4): a training step in float32, under bf16 autocast, and bf16 with
channels-last weights and input (twenty-sixth session): python benchmarks/results/bf16_training/view_step_time.py"""
import sys, time, torch, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from model.image_view import build_unet
torch.set_num_threads(2)
def run(bf16, cl, B=4):
    net = build_unet(); opt = torch.optim.Adam(net.parameters(), 1e-3)
    if cl: net = net.to(memory_format=torch.channels_last)
    x = torch.rand(B, 1, 128, 128); y = (torch.rand(B, 1, 128, 128) > 0.5).float()
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    ts = []
    for i in range(25):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if i >= 5: ts.append(time.perf_counter() - t)
    return statistics.median(ts)
for bf16, cl in ((False, False), (True, False), (True, True), (False, False)):
    print(f"bf16={bf16} cl={cl}: {run(bf16, cl)*1000:.1f} ms/step")
