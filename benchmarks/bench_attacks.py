"""Attack-engine speed: PGD++ overheads, our PGD vs torchattacks, HNS vs the authors' loop.

Measured side by side in one run, same model and batch, T = 20 steps, d = 10 classes
(``--classes 100`` for the CIFAR-100 case, where HNS's Hessian norm costs most),
interleaved repeats, median wall time. Claims checked (printed as a Markdown table):

* PGD++NJS / PGD <= 1.05 (β1 calibrated once per model, as in the paper; the one-off
  calibration cost is reported separately);
* PGD++HNS / PGD <= 1.5 (β* computed once per call, at the random start);
* our PGD / torchattacks PGD <= 1.0;
* our HNS β selection (batched Jacobian, Gram form, vectorized grid) vs the authors'
  procedure (per sample, batch of 1: d backward passes for J, then for each of the 100 grid
  β the explicit N×N Hessian ``β² Jᵀ S(β) J``, its Frobenius norm, argmax) >= 50× faster with
  the same β (asserted on the samples the reference is run on; both in float64).

Run: ``.venv/bin/python benchmarks/bench_attacks.py [--batch 64] [--repeats 5] [--ref-samples 2]
[--classes 10]``
(CPU, one thread by default: ``--threads``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnnrobust.attacks import NJS, PGD, hns_temperature  # noqa: E402
from bnnrobust.attacks.hns import hns_beta_from_gram  # noqa: E402
from bnnrobust.attacks.jacobian import gram_from_jacobian, input_jacobian_and_logits  # noqa: E402


def conv_net(d: int = 10) -> nn.Module:
    """A small CIFAR-shaped conv net (3×32×32 → d)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, d),
    )


def hns_reference(model: nn.Module, x: Tensor, y: Tensor, n_grid: int = 100) -> Tensor:
    """The authors' HNS procedure: one sample at a time, explicit N×N Hessians, argmax."""
    betas_out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logits = model(xi)
        d = logits.shape[1]
        rows = [
            torch.autograd.grad(logits[0, k], xi, retain_graph=True)[0].flatten() for k in range(d)
        ]
        jac = torch.stack(rows).double()  # (d, N)
        z = logits.detach()[0].double()
        top = z.topk(2).values
        gamma = float(top[0] - top[1])
        if int(z.argmax()) != int(y[i]) or gamma <= 0:
            betas_out.append(1.0)
            continue
        eps_max, eps_min = 1 - 1 / d - 0.01, 1e-72
        b_lo = -math.log(eps_max / ((1 - eps_max) * (d - 1))) / gamma
        b_hi = -math.log(eps_min / ((1 - eps_min) * (d - 1))) / gamma
        grid = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64) * (b_hi - b_lo) + b_lo
        scores = []
        for b in grid.tolist():
            p = torch.softmax(b * z, 0)
            s = torch.diag(p) - torch.outer(p, p)
            hess = b * b * (jac.T @ s @ jac)  # N × N
            scores.append(float(torch.linalg.norm(hess)))
        k = max(range(n_grid), key=lambda j: scores[j])
        betas_out.append(1.0 if k in (0, n_grid - 1) else float(grid[k]))
    return torch.tensor(betas_out, dtype=torch.float64)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10, help="logits d of the conv net")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import torchattacks

    model = conv_net(args.classes).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correctly classified: HNS does real work
    eps, alpha, t_steps = 8 / 255, 2 / 255, args.steps

    jac, logits = input_jacobian_and_logits(model, x)
    gram = gram_from_jacobian(jac)
    njs = NJS()
    t_calib = timed(lambda: njs.calibrate(model, x))
    attacks: dict[str, Callable[[], object]] = {
        "PGD (ours)": lambda: PGD(eps, alpha, t_steps, seed=0)(model, x, y),
        "PGD++NJS (ours)": lambda: PGD(eps, alpha, t_steps, temperature=njs, seed=0)(model, x, y),
        "PGD++HNS (ours)": lambda: PGD(eps, alpha, t_steps, temperature="hns", seed=0)(model, x, y),
        "PGD (torchattacks)": lambda: torchattacks.PGD(model, eps=eps, alpha=alpha, steps=t_steps)(
            x, y
        ),
        "HNS β selection (ours, batch)": lambda: hns_temperature(model, x, y),
        "  of which: the Jacobian (d backward passes)": lambda: input_jacobian_and_logits(model, x),
        "  of which: the Hessian-norm grid (from G = J Jᵀ)": lambda: hns_beta_from_gram(
            gram, logits, y
        ),
    }
    for fn in attacks.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in attacks}
    for _ in range(args.repeats):
        for name, fn in attacks.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    n_ref = min(args.ref_samples, args.batch)
    t_ref = timed(lambda: hns_reference(model, x[:n_ref], y[:n_ref]))
    ref_beta = hns_reference(model, x[:n_ref], y[:n_ref])
    our_beta = hns_temperature(model, x, y)[:n_ref].double()
    assert torch.allclose(ref_beta, our_beta, rtol=1e-5, atol=0), (ref_beta, our_beta)
    n_fallback = int((our_beta == 1).sum())
    ref_per_sample = t_ref / n_ref
    ours_per_sample = med["HNS β selection (ours, batch)"] / args.batch

    rows = [
        (
            "PGD++NJS / PGD (β1 calibrated once)",
            med["PGD++NJS (ours)"] / med["PGD (ours)"],
            "≤ 1.05",
        ),
        ("PGD++HNS / PGD", med["PGD++HNS (ours)"] / med["PGD (ours)"], "≤ 1.5"),
        ("our PGD / torchattacks PGD", med["PGD (ours)"] / med["PGD (torchattacks)"], "≤ 1.0"),
        ("HNS β: authors' loop / ours (per sample)", ref_per_sample / ours_per_sample, "≥ 50"),
    ]
    print(f"# bench_attacks — {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s); conv net 3×32×32 → {args.classes}, batch {args.batch}, "
        f"T = {t_steps}, "
        f"eps 8/255, step 2/255; {args.repeats} interleaved repeats, median\n"
    )
    print("| attack | median time (s) |")
    print("|---|---|")
    for name, v in med.items():
        print(f"| {name} | {v:.4f} |")
    print(
        f"| NJS β1 calibration (once per model, {min(args.batch, njs.n_jsv)} samples) | {t_calib:.4f} |"
    )
    print(f"| HNS β selection, authors' loop ({n_ref} samples) | {t_ref:.4f} |")
    print()
    print("| ratio | value | goal | met |")
    print("|---|---|---|---|")
    for name, value, goal in rows:
        ok = value <= float(goal[2:]) if goal.startswith("≤") else value >= float(goal[2:])
        print(f"| {name} | {value:.3f} | {goal} | {'yes' if ok else 'no'} |")
    print(
        f"\nSame β as the authors' loop on {n_ref} samples (rtol 1e-5; {n_fallback} fall back to 1). "
        f"Per sample: authors {ref_per_sample * 1e3:.1f} ms, ours {ours_per_sample * 1e3:.2f} ms."
    )


if __name__ == "__main__":
    main()
