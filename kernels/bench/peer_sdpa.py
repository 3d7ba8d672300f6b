# Peer for BenchmarkAttention (kernels/cuda_train_bench_test.go): PyTorch's fused causal
# attention (scaled_dot_product_attention, flash backend) at the same shapes, bf16, forward and
# backward timed with CUDA events; TFLOP/s counted as the Go benchmark counts them.
#   python3 kernels/bench/peer_sdpa.py
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

def bench(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3

for name, B, Hq, Hkv, D, T in [("953m", 8, 16, 16, 128, 2048), ("d64-gqa", 8, 12, 4, 64, 2048)]:
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, Hq, T, D, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, T, D, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, T, D, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    dO = torch.randn(B, Hq, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 2 * 2 * T * T / 2 * D * Hq * B
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hq != Hkv)
        out = fwd()
        tf = bench(fwd)
        bwd = lambda: torch.autograd.grad(out, (q, k, v), dO, retain_graph=True)
        tb = bench(bwd)
    print(f"sdpa {name}: forward {tf*1e3:.2f} ms {flops/tf/1e12:.0f} TFLOP/s, backward {tb*1e3:.2f} ms {2.5*flops/tb/1e12:.0f} TFLOP/s")
