"""One normalization site and one state-dict layout for the zoo networks; old files still load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import train_tiny  # noqa: E402

from bnnrobust.evaluation.checkpoint import load_system  # noqa: E402
from bnnrobust.models import ConvNet  # noqa: E402
from bnnrobust.models.normalize import (  # noqa: E402
    Normalize,
    upgrade_layout,
    with_input_normalization,
)
from bnnrobust.systems import ImageClassifier  # noqa: E402

MEAN, STD = [0.3], [0.2]


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout the system wrote before: ``model.0.*`` (Normalize), ``model.1.*`` (net)."""
    out = {}
    for key, value in state.items():
        if key.startswith("model.normalize."):
            out["model.0." + key.removeprefix("model.normalize.")] = value
        elif key.startswith("model."):
            out["model.1." + key.removeprefix("model.")] = value
        else:
            out[key] = value
    return out


def _x() -> torch.Tensor:
    return torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_system_and_network_normalization_give_one_layout() -> None:
    torch.manual_seed(0)
    by_system = ImageClassifier(ConvNet(10, 1, binarizer="bc", width=0.25), mean=MEAN, std=STD)
    torch.manual_seed(0)
    by_network = ImageClassifier(ConvNet(10, 1, binarizer="bc", width=0.25, mean=MEAN, std=STD))
    keys = list(by_system.state_dict())
    assert keys == list(by_network.state_dict())
    assert "model.normalize.mean" in keys and not any(k.startswith(("model.0.", "model.1."))
                                                      for k in keys)
    assert isinstance(by_system.model, ConvNet) and isinstance(by_system.model.normalize, Normalize)
    by_network.load_state_dict(by_system.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(by_system.eval()(_x()), by_network.eval()(_x()))


def test_other_modules_are_wrapped_and_double_normalization_is_refused() -> None:
    foreign = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    wrapped = with_input_normalization(foreign, MEAN, STD)
    assert isinstance(wrapped, nn.Sequential) and isinstance(wrapped[0], Normalize)
    assert wrapped[1] is foreign
    assert with_input_normalization(foreign, None, None) is foreign
    net = ConvNet(10, 1, width=0.25, mean=MEAN, std=STD)
    assert with_input_normalization(net, MEAN, STD) is net  # the same values: kept once
    with pytest.raises(ValueError, match=r"mean=\[0.3\].*mean=\[0.5\].*normalized twice"):
        with_input_normalization(ConvNet(10, 1, width=0.25, mean=MEAN, std=STD), [0.5], [0.2])
    with pytest.raises(ValueError, match="both mean and std"):
        with_input_normalization(foreign, MEAN, None)


def test_old_layout_state_dict_loads_into_the_new_one() -> None:
    torch.manual_seed(1)
    system = ImageClassifier(ConvNet(10, 1, binarizer="bc", width=0.25), mean=MEAN, std=STD).eval()
    old = _old_layout(system.state_dict())
    assert "model.0.mean" in old and "model.1.features.0.weight" in old
    assert list(upgrade_layout(system, old)) == list(system.state_dict())  # same keys, same order
    torch.manual_seed(2)
    fresh = ImageClassifier(ConvNet(10, 1, binarizer="bc", width=0.25), mean=MEAN, std=STD).eval()
    fresh.load_state_dict(old, strict=True)  # the network's load pre-hook renames
    with torch.no_grad():
        torch.testing.assert_close(fresh(_x()), system(_x()))


def test_old_layout_checkpoint_file_loads(tmp_path: Path) -> None:
    ckpt, _ = train_tiny(str(tmp_path), network="convnet", width=0.25)
    system, _ = load_system(ckpt)
    blob = torch.load(ckpt, weights_only=True, map_location="cpu")
    blob["state_dict"] = _old_layout(blob["state_dict"])
    old_file = tmp_path / "old_layout.ckpt"
    torch.save(blob, old_file)
    again, _ = load_system(old_file)
    with torch.no_grad():
        torch.testing.assert_close(again(_x()), system(_x()))
    lightning = ImageClassifier.load_from_checkpoint(old_file, weights_only=True,
                                                     map_location="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(lightning(_x()), system(_x()))


def test_any_model_names_the_network_own_normalize(tmp_path: Path) -> None:
    from bnnrobust.evaluation.any_model import AnyModelError, build_model

    torch.manual_seed(3)
    system = ImageClassifier(ConvNet(10, 1, width=0.25), mean=MEAN, std=STD).eval()
    weights = tmp_path / "new_layout.pt"
    torch.save(system.state_dict(), weights)
    args = {"num_classes": 10, "in_channels": 1, "width": 0.25}
    with pytest.raises(AnyModelError, match=r"own Normalize.*add mean: \[0.3\] and std: \[0.2\]"):
        build_model("bnnrobust.models:ConvNet", model_args=args, weights=weights)
    net = build_model("bnnrobust.models:ConvNet", model_args={**args, "mean": MEAN, "std": STD},
                      weights=weights)
    with torch.no_grad():
        torch.testing.assert_close(net(_x()), system(_x()))
