"""Jacobian singular-value statistics of 100 samples: batched Jacobian vs a per-sample loop.

Model: the quickstart ConvNet (width 0.5, Fashion-MNIST, 10 classes, eval mode); data: the
first 100 Fashion-MNIST test images (random images if the files are missing). ``--model``
picks another architecture (on random 3x32x32 images). Compared:

* ``loop_autograd`` — per sample (batch of 1): one forward, d backward passes (one per
  logit, ``retain_graph``), one SVD of the d × N Jacobian (``torch.linalg.svdvals``);
* ``loop_functional`` — per sample: ``torch.autograd.functional.jacobian(vectorize=True)``
  (torch's own per-sample Jacobian: one forward, one vmapped backward), one SVD;
* ``loop_batch1`` — per sample: ``input_jacobian`` on a batch of 1 (the sample repeated d
  times, one backward), one SVD;
* ``batched`` — what :mod:`bnnrobust.metrics.signal` uses: ``input_jacobian_and_logits`` on
  the whole batch (chunks of 32 samples: one forward, d backward passes per chunk, eval
  BatchNorm run as ``x·α + β``) and the singular values from the d × d Gram matrix ``J Jᵀ``
  (``eigvalsh``);
* ``batched_plain_bn`` — the same with ``affine_batchnorm=False`` (BatchNorm layers called
  as they are), to show what the affine BatchNorm contributes.

Goal: ``batched`` >= 5x faster than the per-sample loop. The methods are timed interleaved
(one call of each per round, ``--repeats`` rounds) so that a noisy shared machine slows them
alike; the table gives the median time and the median of the per-round speed-ups.

    .venv/bin/python benchmarks/bench_jsv.py [--n 100] [--repeats 5] [--threads 2]
        [--model convnet] [--width 0.5] [--binarizer none] [--device cpu|cuda]
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
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

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


def loop_functional(model: nn.Module, x: Tensor) -> Tensor:
    """torch's own per-sample Jacobian (``vectorize=True``: one vmapped backward per sample)."""
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: model(v)[0], x[i : i + 1], vectorize=True)
        out.append(torch.linalg.svdvals(jac.reshape(jac.shape[0], -1)))
    return torch.stack(out)


def loop_batch1(model: nn.Module, x: Tensor) -> Tensor:
    return torch.stack([torch.linalg.svdvals(input_jacobian(model, x[i : i + 1])[0])
                        for i in range(x.shape[0])])


def batched(model: nn.Module, x: Tensor) -> Tensor:
    jac, _ = input_jacobian_and_logits(model, x)
    return singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])


def batched_plain_bn(model: nn.Module, x: Tensor) -> Tensor:
    jac, _ = input_jacobian_and_logits(model, x, affine_batchnorm=False)
    return singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])


METHODS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "loop_autograd": loop_autograd,
    "loop_functional": loop_functional,
    "loop_batch1": loop_batch1,
    "batched_plain_bn": batched_plain_bn,
    "batched": batched,
}


def timed_interleaved(model: nn.Module, x: Tensor,
                      repeats: int) -> tuple[dict[str, list[float]], dict[str, Tensor]]:
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    values: dict[str, Tensor] = {}
    for _ in range(repeats):
        for name, fn in METHODS.items():
            _sync(x.device)
            start = time.perf_counter()
            values[name] = fn(model, x).double()
            _sync(x.device)
            times[name].append(time.perf_counter() - start)
    return times, values


class FlopCount(TorchDispatchMode):
    """Counts the FLOPs torch's flop registry knows (convolutions and their backward, matmuls).

    ``FlopCounterMode`` cannot be used: its module hooks do not allow ``autograd.grad``
    with respect to a leaf.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--model", default="convnet",
                    help="a bnnrobust model name; convnet runs on Fashion-MNIST images (1x28x28), "
                         "the CIFAR architectures on random 3x32x32 images")
    ap.add_argument("--binarizer", default="none", help="none, bc, gd_tanh, md_tanh_s or hubara")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.model == "convnet":
        model = create_model("convnet", num_classes=10, in_channels=1, width=args.width,
                             binarizer=args.binarizer, mean=(0.2860,), std=(0.3530,))
        x = load_images(args.n)
    else:
        model = create_model(args.model, num_classes=10, in_channels=3, width=args.width,
                             binarizer=args.binarizer, mean=(0.49, 0.48, 0.45),
                             std=(0.25, 0.24, 0.26))
        x = torch.rand(args.n, 3, 32, 32)
    model, x = model.to(device).eval(), x.to(device)
    with torch.enable_grad():
        for fn in METHODS.values():  # warm-up
            fn(model, x[:4])
        _sync(device)
        times, values = timed_interleaved(model, x, args.repeats)
    ref = values["loop_autograd"]
    print(f"\n{datetime.date.today()}  {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"{args.n} samples, {args.model} width {args.width} binarizer {args.binarizer} on "
          f"{device}, d = 10, N = {x[0].numel()}; {args.repeats} interleaved rounds\n")

    def speedup(base: str, name: str) -> tuple[float, float, float]:
        ratios = [b / t for b, t in zip(times[base], times[name], strict=True)]
        return statistics.median(ratios), min(ratios), max(ratios)

    print("| method | median seconds | speed-up vs loop_autograd (median, min–max of rounds) "
          "| max abs diff of σ | jsv mean | jsv std |")
    print("|---|---|---|---|---|---|")
    for name, sv in values.items():
        diff = float((sv - ref).abs().max())
        med, lo, hi = speedup("loop_autograd", name)
        print(f"| {name} | {statistics.median(times[name]):.3f} | {med:.1f}x ({lo:.1f}–{hi:.1f}) | "
              f"{diff:.1e} | {float(sv.mean()):.4g} | {float(sv.std(unbiased=False)):.4g} |")
    med, lo, hi = speedup("loop_batch1", "batched")
    print(f"\nbatched vs loop_batch1: {med:.1f}x ({lo:.1f}–{hi:.1f})")
    fastest = min(("loop_autograd", "loop_functional", "loop_batch1"),
                  key=lambda name: statistics.median(times[name]))
    med, lo, hi = speedup(fastest, "batched")
    print(f"batched vs the fastest per-sample loop ({fastest}): {med:.1f}x ({lo:.1f}–{hi:.1f})")
    # The batched path is bound by arithmetic: count what it does and how fast it does it.
    with torch.enable_grad(), FlopCount() as counter:
        batched(model, x)
    gflop = counter.total / 1e9
    print(f"batched: {gflop:.2f} GFLOP counted (convolutions, matmuls), "
          f"{gflop / statistics.median(times['batched']):.0f} GFLOP/s; the same arithmetic in "
          f"{fastest}: {gflop / statistics.median(times[fastest]):.0f} GFLOP/s")
    # A ceiling for this machine: float32 matrix multiplication (1024 x 1024) FLOP rate.
    a = torch.randn(1024, 1024, device=device)
    gemm_times = []
    for _ in range(10):
        _sync(device)
        start = time.perf_counter()
        a @ a
        _sync(device)
        gemm_times.append(time.perf_counter() - start)
    peak = 2 * 1024**3 / 1e9 / min(gemm_times)
    floor = gflop / peak
    print(f"float32 matmul peak here: {peak:.0f} GFLOP/s; at that rate the batched arithmetic "
          f"alone takes {floor:.3f} s, so no batched Jacobian beats {fastest} by more than "
          f"~{statistics.median(times[fastest]) / floor:.1f}x on this machine")


if __name__ == "__main__":
    main()
