"""What one local training step of the default heads costs on one CPU thread, by optimizer implementation.

    python benchmarks/step_cost.py [--image-dim 5120] [--report-dim 384] [--batch-size 64] [--steps 50]

The default dimensions are the built-in encoders' features (EfficientNet-Lite0's pooled grid, MiniLM); a
hospital worker trains on one thread (`simulation.client_cpus=1`). Prints milliseconds per step for the
forward and backward pass and for the AdamW update, per implementation (for-loop, foreach, fused).
"""

import argparse
import time

import torch

from fedmm.config import HeadsConfig
from fedmm.models.heads import build_heads
from fedmm.models.losses import symmetric_info_nce

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-dim", type=int, default=5120)
    parser.add_argument("--report-dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    heads = build_heads(args.image_dim, args.report_dim, HeadsConfig(512, 128, 0.07), seed=0)
    images, reports = torch.randn(args.batch_size, args.image_dim), torch.randn(args.batch_size, args.report_dim)
    print(f"{sum(p.numel() for p in heads.parameters()):,} parameters, batch {args.batch_size}, 1 thread")
    print("| AdamW | forward + backward (ms) | update (ms) |\n|---|---|---|")
    for name, options in IMPLEMENTATIONS.items():
        optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-3, weight_decay=1e-4, **options)
        for _pass in ("warm-up", "measured"):  # the figures printed are the second pass
            backward = update = 0.0
            for _ in range(args.steps):
                start = time.perf_counter()
                loss = symmetric_info_nce(heads.embed_images(images), heads.embed_reports(reports), heads.scale()).total
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                middle = time.perf_counter()
                optimizer.step()
                backward, update = backward + middle - start, update + time.perf_counter() - middle
        print(f"| {name} | {1e3 * backward / args.steps:.2f} | {1e3 * update / args.steps:.2f} |")


if __name__ == "__main__":
    main()
