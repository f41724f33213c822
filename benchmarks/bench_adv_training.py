"""Cost of one adversarial training step relative to (T + 1) standard training steps.

An adversarial step of :class:`bnnrobust.systems.AdversarialClassifier` runs T attack
iterations (forward + input-gradient backward, eval mode) plus one ordinary training step, so
its natural unit is ``(T + 1)`` standard steps. This script measures, on the same model (a
small BNN ConvNet, MD-tanh-S), batch (128 × 1 × 28 × 28) and optimizer, side by side in one
run with interleaved repeats, the median time of

* ``std``: one standard training step (train-mode forward, CE, backward, Adam step);
* ``pgd``, ``pgd++njs``, ``pgd++hns``: one adversarial training step (inner attack with
  T = 7, eps 0.1, step 0.025, then the outer step), exactly as ``training_step`` does it
  (``make_adversarial`` + outer forward/backward/step);

and reports ``ratio = t_adv / ((T + 1) · t_std)`` (goal ≤ 1.15 for PGD and PGD++NJS).
NJS re-estimates β1 on a fixed batch every ``njs_interval`` steps; that cost is measured
separately and reported amortized (``ratio_amortized``).

    python benchmarks/bench_adv_training.py [--repeats 15] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnnrobust.models import ConvNet  # noqa: E402
from bnnrobust.systems import AdversarialClassifier  # noqa: E402

STEPS = 7
VARIANTS = ("pgd", "pgd++njs", "pgd++hns")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_system(
    name: str, width: float, binarizer: str, njs_interval: int, device: torch.device
) -> tuple[AdversarialClassifier, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ConvNet(num_classes=10, in_channels=1, width=width, binarizer=binarizer)
    attack = {"name": name, "eps": 0.1, "step_size": 0.025, "steps": STEPS}
    system = AdversarialClassifier(
        model, train_attack=attack, njs_interval=njs_interval, attack_dataset="fmnist"
    ).to(device)
    system.train()
    return system, torch.optim.Adam(system.parameters(), lr=1e-3)


def _standard_step(
    system: AdversarialClassifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(system(x), y).backward()
    opt.step()


def _adversarial_step(
    system: AdversarialClassifier, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    opt.zero_grad(set_to_none=True)
    system._maybe_calibrate_njs(x)  # no-op after the first call (no trainer: step stays 0)
    x_mixed, _ = system.make_adversarial(x, y)
    F.cross_entropy(system(x_mixed), y).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--binarizer", default="md_tanh_s")
    parser.add_argument("--njs_interval", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)

    systems = {"std": _make_system("pgd", args.width, args.binarizer, args.njs_interval, device)}
    for name in VARIANTS:
        systems[name] = _make_system(name, args.width, args.binarizer, args.njs_interval, device)
    steps = {"std": _standard_step, **{name: _adversarial_step for name in VARIANTS}}
    times: dict[str, list[float]] = {k: [] for k in systems}
    for rep in range(args.warmup + args.repeats):
        for key, (system, opt) in systems.items():  # interleaved: one of each per round
            _sync(device)
            t0 = time.perf_counter()
            steps[key](system, opt, x, y)
            _sync(device)
            if rep >= args.warmup:
                times[key].append(time.perf_counter() - t0)

    # NJS re-estimation cost (Jacobian of n_jsv = 100 samples), amortized over njs_interval
    njs_system, _ = systems["pgd++njs"]
    calib = []
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        njs_system.njs_rule.calibrate(njs_system.attack_model(), x)
        _sync(device)
        calib.append(time.perf_counter() - t0)
    calib_s = statistics.median(calib)

    t_std = statistics.median(times["std"])
    rows = []
    for name in VARIANTS:
        t_adv = statistics.median(times[name])
        extra = calib_s / args.njs_interval if name == "pgd++njs" else 0.0
        rows.append(
            {
                "attack": name,
                "adv_step_ms": 1e3 * t_adv,
                "ratio": t_adv / ((STEPS + 1) * t_std),
                "ratio_amortized": (t_adv + extra) / ((STEPS + 1) * t_std),
            }
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "model": f"ConvNet(width={args.width}, binarizer={args.binarizer})",
        "batch": [args.batch_size, 1, 28, 28],
        "T": STEPS,
        "repeats": args.repeats,
        "std_step_ms": 1e3 * t_std,
        "njs_calibration_ms": 1e3 * calib_s,
        "njs_interval": args.njs_interval,
        "rows": rows,
    }
    print(
        f"standard step: {1e3 * t_std:.1f} ms (median of {args.repeats}); T = {STEPS}; "
        f"NJS calibration {1e3 * calib_s:.1f} ms every {args.njs_interval} steps"
    )
    print("| inner attack | adv. step (ms) | adv / ((T+1) std) | amortized (NJS re-estimation) |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['attack']} | {r['adv_step_ms']:.1f} | {r['ratio']:.3f} | "
            f"{r['ratio_amortized']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
