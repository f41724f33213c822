"""Jacobian singular-value statistics of 100 samples: batched Jacobian vs a per-sample loop.

Model: the quickstart ConvNet (width 0.5, Fashion-MNIST, 10 classes, eval mode); data: the
first 100 Fashion-MNIST test images (random images if the files are missing). Compared:

* ``loop_autograd`` — per sample (batch of 1): one forward, d backward passes (one per
  logit, ``retain_graph``), one SVD of the d × N Jacobian (``torch.linalg.svdvals``);
* ``loop_batch1`` — per sample: ``input_jacobian`` on a batch of 1 (the sample repeated d
  times, one backward), one SVD;
* ``batched`` — what :mod:`bnnrobust.metrics.signal` uses: ``input_jacobian_and_logits`` on
  the whole batch (chunks of 32 samples × d copies, one backward per chunk) and the
  singular values from the d × d Gram matrix ``J Jᵀ`` (``eigvalsh``).

Goal: ``batched`` >= 5x faster than the per-sample loop. Median of ``--repeats`` runs.

    .venv/bin/python benchmarks/bench_jsv.py [--n 100] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnnrobust.attacks.jacobian import (  # noqa: E402
    gram_from_jacobian,
    input_jacobian,
    input_jacobian_and_logits,
    singular_values_from_gram,
)
from bnnrobust.models import create_model  # noqa: E402


def load_images(n: int) -> Tensor:
    try:
        from bnnrobust.data import FashionMNISTDataModule

        data = FashionMNISTDataModule(test_subset=n)
        data.setup("test")
        return torch.stack([data.test_set[i][0] for i in range(n)])
    except Exception as err:  # files missing: timing does not depend on the pixels
        print(f"(Fashion-MNIST not available: {err}; using random images)")
        return torch.rand(n, 1, 28, 28)


def loop_autograd(model: nn.Module, x: Tensor) -> Tensor:
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = model(xi)[0]
        rows = [torch.autograd.grad(logits[k], xi, retain_graph=k < logits.shape[0] - 1)[0].flatten()
                for k in range(logits.shape[0])]
        out.append(torch.linalg.svdvals(torch.stack(rows)))
    return torch.stack(out)


def loop_batch1(model: nn.Module, x: Tensor) -> Tensor:
    return torch.stack([torch.linalg.svdvals(input_jacobian(model, x[i : i + 1])[0])
                        for i in range(x.shape[0])])


def batched(model: nn.Module, x: Tensor) -> Tensor:
    jac, _ = input_jacobian_and_logits(model, x)
    return singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])


def timed(fn: Callable[[nn.Module, Tensor], Tensor], model: nn.Module, x: Tensor,
          repeats: int) -> tuple[float, Tensor]:
    times, sv = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        sv = fn(model, x)
        times.append(time.perf_counter() - start)
    assert sv is not None
    return statistics.median(times), sv.double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=1, width=args.width,
                         mean=(0.2860,), std=(0.3530,)).eval()
    x = load_images(args.n)
    with torch.enable_grad():
        batched(model, x[:4])  # warm-up
        results = {name: timed(fn, model, x, args.repeats)
                   for name, fn in (("loop_autograd", loop_autograd), ("loop_batch1", loop_batch1),
                                    ("batched", batched))}
    ref = results["loop_autograd"][1]
    print(f"\n{datetime.date.today()}  {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"{args.n} samples, ConvNet width {args.width}, d = 10, N = 784; median of {args.repeats}\n")
    print("| method | seconds | speed-up vs loop_autograd | max abs diff of σ | jsv mean | jsv std |")
    print("|---|---|---|---|---|---|")
    t_ref = results["loop_autograd"][0]
    for name, (t, sv) in results.items():
        diff = float((sv - ref).abs().max())
        print(f"| {name} | {t:.3f} | {t_ref / t:.1f}x | {diff:.1e} | {float(sv.mean()):.4g} | "
              f"{float(sv.std(unbiased=False)):.4g} |")
    t_b1 = results["loop_batch1"][0]
    print(f"\nbatched vs loop_batch1: {t_b1 / results['batched'][0]:.1f}x")


if __name__ == "__main__":
    main()
