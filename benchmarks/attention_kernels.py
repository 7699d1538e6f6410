"""SDPA's fused CPU kernel vs plain matmul attention, forward and forward+backward, on the shapes our models use.

Why it exists: `perceiver.nn.attention._prefer_math_kernel` routes CPU training to the matmul path because the
fused kernel's backward is several times slower there. Run: `python benchmarks/attention_kernels.py`.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {  # name: (B, H, N queries, M keys, head dim)
    "classic 224x224 cross-attend": (1, 1, 256, 50176, 64),
    "vision-learned cross-attend": (1, 1, 512, 50176, 512),
    "latent self-attention (language)": (1, 8, 256, 256, 32),
    "flow decoder chunk": (1, 1, 8192, 2048, 512),
}


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def math_attention(q, k, v):
    return ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).float().softmax(-1).to(v.dtype) @ v


def measure(name: str, b: int, h: int, n: int, m: int, d: int) -> dict:
    q, k, v = (torch.randn(b, h, length, d) for length in (n, m, m))
    with torch.inference_mode():
        fused_fwd = best_of(lambda: F.scaled_dot_product_attention(q, k, v), 3)
        math_fwd = best_of(lambda: math_attention(q, k, v), 3)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    fused_train = best_of(lambda: F.scaled_dot_product_attention(qg, kg, vg).sum().backward(), 2)
    math_train = best_of(lambda: math_attention(qg, kg, vg).sum().backward(), 2)
    return dict(
        shape=name,
        dims=[b, h, n, m, d],
        fused_fwd=fused_fwd,
        math_fwd=math_fwd,
        fused_train=fused_train,
        math_train=math_train,
    )


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []
    for name, (b, h, n, m, d) in SHAPES.items():
        rows.append(measure(name, b, h, n, m, d))
        print(rows[-1], flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "attention_kernels.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# SDPA fused kernel vs matmul attention on CPU",
        "",
        f"Machine: {platform.processor() or platform.machine()}, 2 threads, torch {torch.__version__}. "
        "Command: `python benchmarks/attention_kernels.py`. Best of 3 runs (forward) and 2 runs (forward+backward), seconds.",
        "",
        "| shape (B, H, N, M, d) | fused fwd | matmul fwd | fused fwd+bwd | matmul fwd+bwd |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} {tuple(r['dims'])} | {r['fused_fwd']:.3f} | {r['math_fwd']:.3f} | "
            f"{r['fused_train']:.3f} | {r['math_train']:.3f} |"
        )
    (out / "attention_kernels.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
