"""bnnrobust.evaluation.checkpoint: rebuilding a trained system safely, with clear errors."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import train_tiny, write_train_config  # noqa: E402

from bnnrobust.data import SyntheticDataModule  # noqa: E402
from bnnrobust.evaluation.checkpoint import (  # noqa: E402
    CheckpointError,
    load_system,
    run_dir_of,
)
from bnnrobust.systems import ImageClassifier  # noqa: E402


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real ConvNet (BinaryConnect) trained 3 steps on synthetic data."""
    folder = tmp_path_factory.mktemp("ckpt_convnet")
    return train_tiny(str(folder), network="convnet", width=0.25)


def _x() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_load_from_checkpoint_hparams(convnet_run: tuple[str, str]) -> None:
    ckpt, _ = convnet_run
    system, dm = load_system(ckpt)
    assert isinstance(system, ImageClassifier) and not system.training
    assert isinstance(dm, SyntheticDataModule)
    assert (dm.num_samples, dm.image_size, dm.batch_size) == (512, 8, 32)
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    for key, value in system.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # Lightning's own loader (same instantiator) gives the same network function
    reference = ImageClassifier.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu").eval()
    with torch.no_grad():
        assert torch.allclose(system(_x()), reference(_x()))


def test_load_with_training_config_and_overrides(convnet_run: tuple[str, str]) -> None:
    ckpt, config = convnet_run
    system, dm = load_system(ckpt, config=config, data_overrides={"batch_size": 5})
    reference, _ = load_system(ckpt)
    assert dm is not None and dm.batch_size == 5
    with torch.no_grad():
        assert torch.allclose(system(_x()), reference(_x()))


def test_run_dir(convnet_run: tuple[str, str]) -> None:
    ckpt, _ = convnet_run
    assert run_dir_of(ckpt) == Path(ckpt).resolve().parent.parent
    assert run_dir_of("/a/b/model.ckpt") == Path("/a/b")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_system(path)
    assert str(path) in str(err.value)


def test_corrupt_and_truncated_files(tmp_path: Path, convnet_run: tuple[str, str]) -> None:
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="unreadable") as err:
        load_system(garbage)
    assert str(garbage) in str(err.value)
    data = Path(convnet_run[0]).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_system(truncated)
    not_lightning = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_lightning)
    with pytest.raises(CheckpointError, match="is a plain state_dict"):
        load_system(not_lightning)
    other = tmp_path / "other.ckpt"
    torch.save({"epoch": 3, "weights": torch.zeros(2)}, other)  # not only tensors
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        load_system(other)


class _Evil:
    """Unpickling this would create a marker file (arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_no_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as f:
        torch.save({"state_dict": {}, "payload": _Evil(marker)}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_system(evil)
    assert not marker.exists()


def test_state_dict_mismatch_names_keys(tmp_path: Path, convnet_run: tuple[str, str]) -> None:
    ckpt, _ = convnet_run
    wider = write_train_config(str(tmp_path), network="convnet", width=0.5)
    with pytest.raises(CheckpointError, match="does not match") as err:
        load_system(ckpt, config=wider)
    msg = str(err.value)
    assert "shape mismatches" in msg and "model.features.0.weight" in msg and ckpt in msg
    other = write_train_config(str(tmp_path), network="tiny")
    # a checkpoint that records its network: the other network class is named first
    with pytest.raises(CheckpointError, match="trained as network 'bnnrobust.models.ConvNet'.*"
                                              "builds network 'tests.helpers_models.TinyNet'"):
        load_system(ckpt, config=other)
    # one that records none (built in Python): the state-dict keys that do not match are named
    blob = torch.load(ckpt, weights_only=True, map_location="cpu")
    blob["hyper_parameters"].pop("model")
    torch.save(blob, tmp_path / "python_built.ckpt")
    with pytest.raises(CheckpointError, match="missing in the checkpoint") as err:
        load_system(tmp_path / "python_built.ckpt", config=other)
    assert "model.1.net.1.weight" in str(err.value) and "not in the model" in str(err.value)


def test_checkpoint_without_network_config(tmp_path: Path, convnet_run: tuple[str, str]) -> None:
    ckpt = torch.load(convnet_run[0], weights_only=True, map_location="cpu")
    ckpt["hyper_parameters"].pop("model")
    path = tmp_path / "python_built.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="--train_config"):
        load_system(path)
    system, _ = load_system(path, config=convnet_run[1])  # the training YAML rescues it
    assert isinstance(system, ImageClassifier)
