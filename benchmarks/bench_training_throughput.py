"""Training throughput (images/s): a Lightning system vs a plain PyTorch loop, side by side.

Both train the same BNN ResNet-18 (CIFAR variant, small width) on the same in-memory
synthetic 32x32 batches with Adam, and both call the binarizer's ``on_optimizer_step`` after
every step (the Lightning side through the ``BinarizerSchedule`` callback). Runs alternate
(plain, Lightning, plain, ...) so that machine noise hits both; the best run of each is kept.
The goal is a ratio Lightning/plain >= 0.9.

    python benchmarks/bench_training_throughput.py --width 0.25 --batch-size 64 --steps 40

``bnnrobust.systems.ImageClassifier`` is used when importable, else a minimal LightningModule.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnnrobust.binarize import binary_modules  # noqa: E402
from bnnrobust.models import create_model  # noqa: E402
from callbacks.binarizer_schedule import BinarizerSchedule  # noqa: E402


class _MinimalSystem(pl.LightningModule):
    """Fallback system: cross-entropy on ``self.model``, Adam lr 1e-3."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=1e-3)


def _system(model: nn.Module) -> tuple[pl.LightningModule, str]:
    try:
        from bnnrobust.systems import ImageClassifier
    except ImportError:
        return _MinimalSystem(model), "minimal LightningModule"
    return ImageClassifier(model=model, num_classes=10), "bnnrobust.systems.ImageClassifier"


class _Timer(pl.Callback):
    """Wall time from the end of warm-up batch ``warmup`` to the end of training."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx + 1 == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._sync()
        self.end = time.perf_counter()


def _model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=10, width=args.width, binarizer=args.binarizer).to(
        device
    )


def _loader(args: argparse.Namespace) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + args.warmup)
    data = TensorDataset(
        torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)


def plain_loop(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of a hand-written training loop."""
    model = _model(args, device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    layers = binary_modules(model)
    binarizer = layers[0].binarizer if layers else None
    start = 0.0
    for step, (x, y) in enumerate(_loader(args), start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if binarizer is not None:
            binarizer.on_optimizer_step(layers, step)
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def lightning_loop(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    """Images/s of ``Trainer.fit`` on the system (no logger, checkpoints or progress bar)."""
    system, kind = _system(_model(args, device))
    timer = _Timer(args.warmup, device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=args.steps + args.warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[BinarizerSchedule(), timer],
    )
    trainer.fit(system, train_dataloaders=_loader(args))
    return args.steps * args.batch_size / (timer.end - timer.start), kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier")
    parser.add_argument("--binarizer", default="md_tanh_s")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plain, light, kind = [], [], ""
    for _ in range(args.repeats):
        plain.append(plain_loop(args, device))
        ips, kind = lightning_loop(args, device)
        light.append(ips)
    best_plain, best_light = max(plain), max(light)
    print(
        f"date: {dt.date.today().isoformat()}  torch {torch.__version__}  lightning {pl.__version__}  "
        f"python {platform.python_version()}"
    )
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(
        f"model: BNN ResNet-18 width {args.width}, binarizer {args.binarizer}; batch {args.batch_size}, "
        f"32x32 synthetic, {args.steps} timed steps after {args.warmup} warm-up, {args.repeats} runs each"
    )
    print(
        f"plain PyTorch loop: {best_plain:9.1f} images/s   (runs: {', '.join(f'{v:.1f}' for v in plain)})"
    )
    print(
        f"Lightning ({kind}): {best_light:9.1f} images/s   (runs: {', '.join(f'{v:.1f}' for v in light)})"
    )
    print(f"ratio Lightning / plain: {best_light / best_plain:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
