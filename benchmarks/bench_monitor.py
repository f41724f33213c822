"""Overhead of the RobustnessMonitor per epoch on the quickstart configuration.

Quickstart-like: Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), ConvNet width 0.5,
Adam 1e-3, batch 128, 20k training images, 5k validation images, CPU. One epoch is trained
with the monitor at its defaults (128 samples, 64 of them for the signal metrics, quick preset: PGD/PGD++NJS/PGD++HNS, 5 steps,
histograms and Hessian figure to TensorBoard); overhead = monitor seconds / (epoch seconds
without the monitor). Goal: <= 10 %. One epoch is trained without the monitor, then the
monitor runs once per configuration on the trained model (``trainer.validate``); CPU time
(``time.process_time``) is reported next to wall time because the build machine is shared.

    .venv/bin/python benchmarks/bench_monitor.py                       # defaults
    .venv/bin/python benchmarks/bench_monitor.py --num-samples 512 256 128   # several subsets
    .venv/bin/python benchmarks/bench_monitor.py --binarizer md_tanh_s # the BNN-WQ variant

Prints a Markdown table (phase timings of the monitor included).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bnnrobust.data import FashionMNISTDataModule  # noqa: E402
from bnnrobust.models import create_model  # noqa: E402
from bnnrobust.systems import ImageClassifier  # noqa: E402
from callbacks.robustness_monitor import RobustnessMonitor  # noqa: E402


class TimedMonitor(RobustnessMonitor):
    """The callback, plus the CPU time of its hook (robust to other processes' load)."""

    cpu_seconds = 0.0

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        start = time.process_time()
        super().on_validation_epoch_end(trainer, pl_module)
        self.cpu_seconds = time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, nargs="+", default=[None],
                    help="monitor subsets to measure (default: the callback's default)")
    ap.add_argument("--signal-samples", type=int, default=None, help="default: the callback's")
    ap.add_argument("--attacks", nargs="*", default=None, help="attack names (default: quick preset)")
    ap.add_argument("--no-images", action="store_true", help="no histogram / Hessian figure")
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--binarizer", default="none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="monitor runs per config (min is kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    data = FashionMNISTDataModule(batch_size=128, train_subset=args.train_subset)
    model = create_model("convnet", num_classes=10, in_channels=1, width=args.width,
                         binarizer=args.binarizer)
    system = ImageClassifier(model, mean=data.mean, std=data.std, num_classes=10)

    def trainer(tmp: str, callbacks: list) -> L.Trainer:
        return L.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=tmp,
                         logger=L.pytorch.loggers.TensorBoardLogger(tmp), callbacks=callbacks,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # 1) one quickstart epoch (train + validation) without the monitor
        wall, cpu = time.perf_counter(), time.process_time()
        trainer(tmp, []).fit(system, data)
        epoch_wall, epoch_cpu = time.perf_counter() - wall, time.process_time() - cpu
        # 2) the monitor alone on the trained model (trainer.validate runs it once)
        for n in args.num_samples:
            kwargs = {} if n is None else {"num_samples": n}
            if args.signal_samples is not None:
                kwargs["signal_samples"] = args.signal_samples
            if args.no_images:
                kwargs.update(histogram=False, hessian_figure=False)
            best: dict[str, float] = {}
            for _ in range(args.repeats):  # the minimum over repeats filters other processes' load
                monitor = TimedMonitor(attacks=args.attacks, **kwargs)
                trainer(tmp, [monitor]).validate(system, data, verbose=False)
                current = {"wall": monitor.last_metrics["robust/seconds"], "cpu": monitor.cpu_seconds,
                           **monitor.last_timings}
                best = {k: min(v, best.get(k, math.inf)) for k, v in current.items()}
            monitor.best = best
            rows.append(monitor)
        # 3) a second epoch without the monitor; the faster of the two is the reference
        wall, cpu = time.perf_counter(), time.process_time()
        trainer(tmp, []).fit(system, data)
        epoch_wall = min(epoch_wall, time.perf_counter() - wall)
        epoch_cpu = min(epoch_cpu, time.process_time() - cpu)

    print(f"\n{datetime.date.today()}  {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"epoch without monitor (train {args.train_subset} + val 5000 images): "
          f"{epoch_wall:.1f} s wall, {epoch_cpu:.1f} s CPU\n")
    phases = sorted({k for m in rows for k in m.last_timings})
    print(f"monitor: minimum over {args.repeats} runs per configuration; epoch: the faster of two")
    print("| num_samples | signal_samples | attacks (steps) | monitor wall s | monitor CPU s | "
          "overhead (CPU) | overhead (wall) | " + " | ".join(phases) + " |")
    print("|" + "---|" * (7 + len(phases)))
    for m in rows:
        wall_s, cpu_s = m.best["wall"], m.best["cpu"]
        attacks = ", ".join(f"{t} ({getattr(a, 'steps', '-')})" for t, a in zip(m.attack_tags, m.attacks, strict=True))
        print(f"| {m.num_samples} | {min(m.signal_samples, m.num_samples)} | {attacks} | {wall_s:.1f} | "
              f"{cpu_s:.1f} | {100 * cpu_s / epoch_cpu:.1f} % | "
              f"{100 * wall_s / epoch_wall:.1f} % | "
              + " | ".join(f"{m.best.get(k, 0.0):.1f}" for k in phases) + " |")
    m = rows[-1]
    print(f"\nclean acc {m.last_metrics['robust/clean_acc']:.3f}; "
          + ", ".join(f"{t} {m.last_metrics[f'robust/{t}_acc']:.3f}" for t in m.attack_tags))


if __name__ == "__main__":
    main()
