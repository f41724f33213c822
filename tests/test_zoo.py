"""The model zoo: checksum-verified, safely loaded networks that train.py made."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bnnrobust import zoo


def test_every_entry_loads_verified_and_gives_finite_logits() -> None:
    names = zoo.list_models()
    assert {"fmnist_ref", "fmnist_bnn_wq_bc", "fmnist_bnn_waq_hubara"} <= set(names)
    x = torch.rand(4, 1, 28, 28)
    for name in names:
        info = zoo.entry(name)
        assert info["command"].startswith("python -m bnnrobust.studies.masking")
        assert 0 < info["metrics"]["pgd"] <= info["metrics"]["clean"] or info["metrics"]["pgd"] == 0
        model = zoo.load(name)
        assert not model.training
        with torch.no_grad():
            out = model(x)
        assert out.shape == (4, 10) and bool(torch.isfinite(out).all())


def test_recorded_clean_accuracy_is_what_the_network_gives() -> None:
    from bnnrobust.studies.masking import test_images

    info = zoo.entry("zoo:fmnist_ref")
    x, y = test_images(info["metrics"]["n"])
    with torch.no_grad():
        acc = 100 * float((zoo.load("fmnist_ref")(x).argmax(1) == y).double().mean())
    assert acc == pytest.approx(info["metrics"]["clean"], abs=1e-6)


def test_checksum_mismatch_and_unknown_names_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, root)
    data = bytearray((root / "fmnist_ref.ckpt").read_bytes())
    data[-10] ^= 0xFF
    (root / "fmnist_ref.ckpt").write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="SHA-256.*corrupt or was replaced"):
        zoo.load("fmnist_ref", root=root)
    with pytest.raises(zoo.ZooError, match="Unknown zoo model 'nope'; accepted: .*fmnist_ref"):
        zoo.path("nope")


def test_manifest_cannot_point_outside_the_zoo(tmp_path: Path) -> None:
    import json

    root = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fmnist_ref"]["file"] = "../elsewhere/fmnist_ref.ckpt"
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.ZooError, match="only a .ckpt file name inside the zoo folder"):
        zoo.path("fmnist_ref", root=root)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    import json

    root = tmp_path / "zoo"
    shutil.copytree(zoo.ZOO_DIR, root)
    ckpt = torch.load(root / "fmnist_ref.ckpt", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][key][0] = float("nan")
    torch.save(ckpt, root / "fmnist_ref.ckpt")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fmnist_ref"]["sha256"] = zoo.sha256(root / "fmnist_ref.ckpt")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(zoo.ZooError, match=f"{key}.*non-finite value"):
        zoo.load("fmnist_ref", root=root)
