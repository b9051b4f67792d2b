"""Packed-attention kernels: forward + backward of a whole BLOOM on packed rows, per kernel.

    python bench/bench_attention.py                                # CPU, small-50m, L 512
    python bench/bench_attention.py --device cuda --bf16 --lengths 512 2048 --presets small-50m bloom-560m

Kernels: `eager` (BLOOM's own attention: alibi.baddbmm + additive mask + fp32 softmax) and `sdpa`
(bloomchat's default: torch's scaled_dot_product_attention with the ALiBi + block mask as a float
attn_mask), the latter also pinned to each SDPA backend torch offers (math, efficient, cudnn,
flash: flash and cudnn may refuse a float mask, which is reported, not hidden), and `flex`
(FlexAttention: ALiBi score_mod + BlockMask, compiled on CUDA; on CPU torch has only its unfused
reference backward, shown as flex[cpu-reference]). Each cell is the
median of --steps timed steps after 2 warm-up steps, as tokens/s; rows of 4 conversations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402


def packed_batch(rows: int, length: int, vocab: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    seg = torch.zeros(rows, length, dtype=torch.long)
    for r in range(rows):  # 4 conversations of random lengths per row
        cuts = sorted(torch.randint(1, length, (3,), generator=g).tolist())
        for i, (a, b) in enumerate(zip([0] + cuts, cuts + [length])):
            seg[r, a:b] = i + 1
    return ids.to(device), seg.to(device)


def time_kernel(model, ids, seg, *, kernel: str, backend, steps: int, bf16: bool) -> float | str:
    from bloomchat.train.packing_attn import install_packed_attention, packed_forward

    from bloomchat.train.packing_attn import cpu_flex_reference_backward

    install_packed_attention(model, kernel=kernel)
    ctx = (torch.nn.attention.sdpa_kernel([backend]) if backend is not None
           else cpu_flex_reference_backward() if (kernel == "flex" and not ids.is_cuda) else _null())
    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    times = []
    try:
        with ctx:
            for i in range(steps + 2):
                sync()
                t = time.perf_counter()
                with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = packed_forward(model, ids, seg)
                    loss = logits.float().logsumexp(-1).mean()
                loss.backward()
                sync()
                if i >= 2:
                    times.append(time.perf_counter() - t)
                model.zero_grad(set_to_none=True)
    except RuntimeError as e:
        return "refused: " + str(e).splitlines()[0][:80]
    return ids.numel() / statistics.median(times)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small-50m"])
    ap.add_argument("--lengths", nargs="+", type=int, default=[512])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (as precision: bf16 trains)")
    args = ap.parse_args(argv)
    from torch.nn.attention import SDPBackend

    from bloomchat.models import build_bloom

    variants = [("eager", None), ("sdpa", None), ("flex", None)]
    if args.device.startswith("cuda"):
        variants += [("sdpa", b) for b in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION,
                                          SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION)]
    for preset in args.presets:
        model = build_bloom(preset, vocab_size=32000).to(args.device).train()
        for length in args.lengths:
            ids, seg = packed_batch(args.rows, length, 32000, args.device)
            for kernel, backend in variants:
                r = time_kernel(model, ids, seg, kernel=kernel, backend=backend, steps=args.steps, bf16=args.bf16)
                name = kernel + (f"[{backend.name.lower()}]" if backend is not None else
                                 "[cpu-reference]" if kernel == "flex" and not ids.is_cuda else "")
                cell = f"{r:>10.0f} tok/s" if isinstance(r, float) else r
                print(f"{preset:<11} L {length:>5}  {name:<28} {cell}", flush=True)
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
