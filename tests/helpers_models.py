"""Tiny networks for fast evaluation tests, importable by class path from YAML configs.

``class_path: tests.helpers_models.TinyNet`` works because ``tests/conftest.py`` puts the
repository root on ``sys.path``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """A two-layer MLP on (C, S, S) images in [0, 1]: flatten → linear → ReLU → linear.

    Args:
        num_classes: number of logits (linked from the data module by the CLI).
        in_channels: image channels (linked from the data module).
        image_size: height = width in pixels.
        hidden: hidden units.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def tiny_mlp(centred: bool = False) -> nn.Module:
    """Flatten → Linear(16, 12) → ReLU → Linear(12, 4) on (1, 4, 4) images, seed 0; ``centred``
    scales the first layer by 8 and centres it on the grey image, so that its predictions vary
    with the input (all four classes on random images)."""
    torch.manual_seed(0)
    first, last = nn.Linear(16, 12), nn.Linear(12, 4)
    if centred:
        with torch.no_grad():
            first.weight.mul_(8)
            first.bias.copy_(-0.5 * first.weight.sum(1))
            last.bias.zero_()
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), last)


def result_numbers(res: Any) -> dict[str, Any]:
    """An evaluation result's ``to_dict()`` without wall-clock times and bookkeeping keys
    (``dataset``, ``resumed``): what two runs of the same evaluation must agree on."""
    d = res.to_dict()
    for key in ("seconds", "dataset", "resumed"):
        d.pop(key, None)
    for a in d["attacks"].values():
        a.pop("seconds")
    return d


def write_train_config(folder: str, *, network: str = "tiny", hidden: int = 32,
                       width: float = 0.25, test_attacks: list | None = None,
                       num_samples: int = 512) -> str:
    """Write a tiny training YAML (synthetic data, 8x8 grey images) into ``folder``; return its path.

    ``network="tiny"`` uses :class:`TinyNet`, ``"convnet"`` the real ``bnnrobust.models.ConvNet``
    with the BinaryConnect binarizer.
    """
    from pathlib import Path

    import yaml

    if network == "tiny":
        net = {"class_path": "tests.helpers_models.TinyNet",
               "init_args": {"image_size": 8, "hidden": hidden}}
    else:
        net = {"class_path": "bnnrobust.models.ConvNet",
               "init_args": {"width": width, "binarizer": "bc"}}
    cfg = {
        "model": {"class_path": "bnnrobust.systems.ImageClassifier",
                  "init_args": {"model": net,
                                "optimizer": {"class_path": "torch.optim.Adam",
                                              "init_args": {"lr": 0.01}},
                                "test_attacks": test_attacks}},
        "data": {"class_path": "bnnrobust.data.SyntheticDataModule",
                 "init_args": {"num_samples": num_samples, "image_size": 8, "batch_size": 32}},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "accelerator": "cpu",
                    "enable_progress_bar": False, "enable_model_summary": False},
        "log_dir": str(Path(folder) / "logs"),
    }
    path = Path(folder) / f"train_{network}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train_tiny(folder: str, **kwargs: object) -> tuple[str, str]:
    """Train a few steps with ``bnnrobust.training.main``; return ``(last.ckpt path, YAML path)``."""
    from pathlib import Path

    from bnnrobust.training import main

    config = write_train_config(folder, **kwargs)  # type: ignore[arg-type]
    main(["--config", config, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
          "--skip_test", "true"])
    ckpt = Path(folder) / "logs" / Path(config).stem / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), f"training wrote no checkpoint at {ckpt}"
    return str(ckpt), config
