"""A 2048x2048 matrix product in float32 and bfloat16, and a 3x3 convolution over a batch of 8 LiteMedSAM-sized
embeddings with and without bf16 autocast (twenty-sixth session):
python benchmarks/results/bf16_training/matmul_conv.py"""
import torch, time
torch.set_num_threads(2)
for dt in (torch.float32, torch.bfloat16):
    a=torch.randn(2048,2048,dtype=dt); b=torch.randn(2048,2048,dtype=dt)
    for _ in range(3): a@b
    t=time.perf_counter(); n=10
    for _ in range(n): a@b
    s=(time.perf_counter()-t)/n
    print(dt, f"{2*2048**3/s/1e9:.0f} GFLOP/s")
x=torch.randn(8,256,64,64); conv=torch.nn.Conv2d(256,256,3,padding=1)
for ac in (False, True):
    with torch.autocast("cpu",dtype=torch.bfloat16,enabled=ac):
        for _ in range(2): conv(x)
        t=time.perf_counter()
        for _ in range(5): y=conv(x)
        print("conv autocast" if ac else "conv fp32", (time.perf_counter()-t)/5)
