"""What one local training step of the default heads costs on one CPU thread.

    python benchmarks/step_cost.py [--dp] [--image-dim 5120] [--report-dim 384] [--batch-size 64]
                                   [--bank-size 64] [--steps 50]

The default dimensions are the built-in encoders' features (EfficientNet-Lite0's pooled grid, MiniLM); a
hospital worker trains on one thread (`simulation.client_cpus=1`). Prints milliseconds per step for the
forward and backward pass and for the AdamW update, per implementation (for-loop, foreach, fused).
`--dp`: the DP-SGD step's clipped gradient sum on the reference-bank objective, per-pair gradients
materialized (vmap of grad, what fedmm did before) against ghost clipping (`fedmm.training.ghost`).
"""

import argparse
import time

import torch

from fedmm.config import HeadsConfig
from fedmm.models.heads import build_heads
from fedmm.models.losses import symmetric_info_nce
from fedmm.training.ghost import clipped_gradient_sum, dp_trainable, frozen_under_dp, materialized_pair_gradients

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-dim", type=int, default=5120)
    parser.add_argument("--report-dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bank-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    heads = build_heads(args.image_dim, args.report_dim, HeadsConfig(512, 128, 0.07), seed=0)
    images, reports = torch.randn(args.batch_size, args.image_dim), torch.randn(args.batch_size, args.report_dim)
    print(f"{sum(p.numel() for p in heads.parameters()):,} parameters, batch {args.batch_size}, 1 thread")
    if args.dp:
        dp_step_cost(heads, images, reports, args)
        return
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


def dp_step_cost(heads, images, reports, args) -> None:
    """Milliseconds for the clipped gradient sum of one DP-SGD step, both ways, and their largest difference."""
    bank_images = torch.randn(args.bank_size, args.image_dim)
    bank_reports = torch.randn(args.bank_size, args.report_dim)
    trainable, bound, steps = dp_trainable(heads), 1.0, max(1, args.steps // 10)

    def materialized() -> dict[str, torch.Tensor]:
        per_pair = materialized_pair_gradients(heads, trainable, images, reports, bank_images, bank_reports)
        norms = torch.cat([g.flatten(1) for g in per_pair.values()], dim=1).norm(dim=1)
        factors = (bound / (norms + 1e-6)).clamp(max=1.0)
        return {name: torch.einsum("b,b...->...", factors, g) for name, g in per_pair.items()}

    def ghost() -> dict[str, torch.Tensor]:
        with frozen_under_dp(heads):
            clipped_gradient_sum(heads, images, reports, bank_images, bank_reports, bound)
        return {name: p.grad for name, p in trainable.items()}

    print(f"bank of {args.bank_size} reference rows\n| clipped gradient sum | ms per step |\n|---|---|")
    sums = {}
    for name, compute in (("per-pair gradients materialized", materialized), ("ghost clipping", ghost)):
        sums[name] = compute()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            compute()
        print(f"| {name} | {1e3 * (time.perf_counter() - start) / steps:.1f} |")
    first, second = sums.values()
    difference = max((first[name] - second[name]).abs().max().item() for name in first)
    print(f"largest difference between the two sums: {difference:.2e}")


if __name__ == "__main__":
    main()
