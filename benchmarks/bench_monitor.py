"""Overhead of the RobustnessMonitor per epoch on the quickstart configuration.

Quickstart-like: Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), ConvNet width 0.5,
Adam 1e-3, batch 128, 20k training images, 5k validation images, CPU. One epoch is trained
with the monitor at its defaults (512 samples, quick preset: PGD/PGD++NJS/PGD++HNS, 5 steps,
histograms and Hessian figure to TensorBoard); overhead = monitor seconds / (epoch seconds
without the monitor). Goal: <= 10 %.

    .venv/bin/python benchmarks/bench_monitor.py                       # defaults
    .venv/bin/python benchmarks/bench_monitor.py --num-samples 256     # a smaller subset
    .venv/bin/python benchmarks/bench_monitor.py --binarizer md_tanh_s # the BNN-WQ variant

Prints a Markdown table (phase timings of the monitor included).
"""

from __future__ import annotations

import argparse
import datetime
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=None, help="monitor subset (default: the callback's)")
    ap.add_argument("--batch-size", type=int, default=None, help="monitor batch (default: the callback's)")
    ap.add_argument("--attacks", nargs="*", default=None, help="attack names (default: quick preset)")
    ap.add_argument("--no-images", action="store_true", help="no histogram / Hessian figure")
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--binarizer", default="none")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)

    kwargs = {}
    if args.num_samples is not None:
        kwargs["num_samples"] = args.num_samples
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.no_images:
        kwargs.update(histogram=False, hessian_figure=False)
    monitor = RobustnessMonitor(attacks=args.attacks, **kwargs)

    def run(callbacks: list) -> float:
        L.seed_everything(0, verbose=False)
        data = FashionMNISTDataModule(batch_size=128, train_subset=args.train_subset)
        model = create_model("convnet", num_classes=10, in_channels=1, width=args.width,
                             binarizer=args.binarizer)
        system = ImageClassifier(model, mean=data.mean, std=data.std, num_classes=10)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, default_root_dir=tmp,
                                logger=L.pytorch.loggers.TensorBoardLogger(tmp), callbacks=callbacks,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, num_sanity_val_steps=0)
            start = time.perf_counter()
            trainer.fit(system, data)
            return time.perf_counter() - start

    base = run([])
    with_monitor = run([monitor])
    mon_s = monitor.last_metrics["robust/seconds"]
    print(f"\n{datetime.date.today()}  {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(f"monitor: num_samples={monitor.num_samples}, batch_size={monitor.batch_size}, "
          f"attacks={monitor.attack_tags}, steps={[getattr(a, 'steps', None) for a in monitor.attacks]}, "
          f"images={monitor.histogram or monitor.hessian_figure}\n")
    print("| quantity | seconds |")
    print("|---|---|")
    print(f"| epoch without monitor (train {args.train_subset} + val 5000) | {base:.1f} |")
    print(f"| epoch with monitor | {with_monitor:.1f} |")
    print(f"| monitor (robust/seconds) | {mon_s:.1f} |")
    for key, value in monitor.last_timings.items():
        print(f"| · {key} | {value:.2f} |")
    print(f"| **overhead = monitor / epoch without** | **{100 * mon_s / base:.1f} %** |")
    print(f"\nclean acc {monitor.last_metrics['robust/clean_acc']:.3f}; "
          + ", ".join(f"{t} {monitor.last_metrics[f'robust/{t}_acc']:.3f}" for t in monitor.attack_tags))


if __name__ == "__main__":
    main()
