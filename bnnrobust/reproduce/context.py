"""The pieces every stage shares: :class:`Stage` (one resumable step), :class:`Context`
(paths, settings, cached networks and test data of one run) and :func:`calibrate`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from .common import ReproError, log
from .settings import Settings

if TYPE_CHECKING:
    from bnnrobust.data.base import ImageDataModule


@dataclass
class Stage:
    """One resumable step of the pipeline.

    Attributes:
        key: unique id (``"train/ref"``); its marker is ``<out>/stages/<key with / -> __>.json``.
        title: shown in the progress lines.
        estimate_s: generous estimate of its duration on this machine (seconds).
        outputs: files that must exist for the stage to count as finished.
        run: does the work; returns a JSON-able dict stored in the marker.
        deps: keys of the stages whose outputs it reads (rerun when one of them reran).
        check: optional extra validity check of a finished stage (e.g. checkpoint step).
    """

    key: str
    title: str
    estimate_s: float
    outputs: list[Path]
    run: Callable[[], dict[str, Any]]
    deps: list[str] = field(default_factory=list)
    check: Callable[[dict[str, Any]], str | None] | None = None


class Context:
    """Paths and settings shared by the stages of one run."""

    def __init__(self, out: Path, settings: Settings, markdown: Path, progress: bool) -> None:
        self.out = out
        self.settings = settings
        self.markdown = markdown
        self.progress = progress
        self.step_seconds = 4e-4  # seconds per image-step (fwd+bwd), measured by calibrate()
        self.trained: list[str] = []  # models trained (not reused) during this invocation
        self._models: dict[str, torch.nn.Module] = {}

    # paths
    def run_dir(self, key: str) -> Path:
        return self.out / "runs" / key

    def last_ckpt(self, key: str) -> Path:
        return self.run_dir(key) / "checkpoints" / "last.ckpt"

    def eval_json(self, key: str) -> Path:
        return self.out / f"eval_{key}.json"

    def sweep_json(self, key: str) -> Path:
        return self.out / f"sweep_{key}.json"

    def marker(self, stage_key: str) -> Path:
        return self.out / "stages" / (stage_key.replace("/", "__") + ".json")

    # models and data
    def model(self, key: str) -> torch.nn.Module:
        """The trained network of ``key`` (from its ``last.ckpt``), cached, eval mode."""
        if key not in self._models:
            from bnnrobust.evaluation.checkpoint import load_system

            system, _ = load_system(self.last_ckpt(key))
            self._models[key] = cast(torch.nn.Module, system.model).eval()
        return self._models[key]

    def forget(self, key: str) -> None:
        self._models.pop(key, None)

    def test_data(self, key: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images/labels of the data module stored in ``key``'s checkpoint."""
        from bnnrobust.evaluation.checkpoint import load_system
        from bnnrobust.evaluation.runner import SampleSource

        _, dm = load_system(self.last_ckpt(key))
        if dm is None:
            raise ReproError(f"The checkpoint {self.last_ckpt(key)} stores no data module.")
        dm.prepare_data()
        dm.setup("test")
        src = SampleSource(cast("ImageDataModule", dm).test_set, n)
        total = min(n, len(src))
        if total < n:
            log(f"  note: the test set has only {total} images (asked for {n}).")
        return src.get(0, total)


def calibrate(width: float) -> float:
    """Seconds per image-step (one forward+backward of one image) of the ConvNet on this machine.

    Measured on a fresh float ConvNet of the reproduction's width with a 3-step PGD on 64
    images, after a warm-up; the stage estimates are multiples of it.
    """
    from bnnrobust.attacks.pgd import PGD
    from bnnrobust.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = create_model("convnet", num_classes=10, in_channels=1, width=width).eval()
        x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        atk = PGD(eps=0.1, step_size=0.01, steps=3, seed=0)
        atk(net, x[:8], y[:8])
        t0 = time.perf_counter()
        atk(net, x, y)
        dt = time.perf_counter() - t0
    # binarized layers cost a little more than the float net (sign, clipping): x 1.1
    return 1.1 * dt / (64 * 3)
