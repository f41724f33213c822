"""Every training config in configs/ parses and runs one training step on tiny data.

A recipe is read as ``train.py`` reads it (``--print_config``: the section files a composed
recipe names are read, relative to the recipe, and the defaults filled in); then the data module
is swapped for the synthetic one (same channels and image size), widths are shrunk and the
robustness monitor works on a handful of samples, so the whole sweep stays fast; everything else
(system, network, binarizer, optimizer, scheduler, callbacks) is the config's.

The layout (configs/README.md): the CIFAR recipes are composed of the section files of
``configs/components/``; the CIFAR-10 and CIFAR-100 variants of a network differ in the one
``data:`` file they name.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from bnnrobust.training import TrainCLI
from bnnrobust.training import main as train_main

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "configs" / "components"
#: the folders whose recipes are composed of configs/components/ (fmnist/, reproduce/ and
#: quickstart.yaml stay self-contained: bnnrobust.reproduce, bnnrobust.studies.masking and
#: bnnrobust.quickstart read them as plain YAML and write edited copies elsewhere)
COMPOSED = ("cifar10", "cifar100", "paper/train")
#: the sections a composed recipe takes from a file of configs/components/<folder>/
SECTIONS = {("model", "init_args", "model"): "networks", ("data",): "datasets",
            ("model", "init_args", "optimizer"): "optimizers",
            ("model", "init_args", "lr_scheduler"): "schedules", ("trainer",): "trainers"}


def training_configs() -> list[Path]:
    found = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        if isinstance(cfg, dict) and "model" in cfg and "data" in cfg:
            found.append(path)
    return found


def resolved(path: Path) -> dict:
    """``path`` as train.py reads it: ``train.py --config path --print_config``, in process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        TrainCLI(args=["--config", str(path), "--print_config"], run=False)
    assert done.value.code in (0, None), f"{path}: --print_config exited with {done.value.code}"
    return yaml.safe_load(out.getvalue())


def shrink(cfg: dict) -> dict:
    data_args = (cfg["data"].get("init_args") or {})
    cls = cfg["data"]["class_path"]
    rgb = "CIFAR" in cls
    cfg["data"] = {"class_path": "bnnrobust.data.SyntheticDataModule", "init_args": {
        "num_samples": 16, "num_classes": 100 if "CIFAR100" in cls else 10,
        "in_channels": 3 if rgb else data_args.get("in_channels", 1),
        "image_size": 32 if rgb else data_args.get("image_size", 28), "batch_size": 4}}
    net = cfg["model"]["init_args"].get("model", {})
    if str(net.get("class_path", "")).startswith("bnnrobust.models."):
        net.setdefault("init_args", {})["width"] = 0.125
    for cb in (cfg.get("trainer") or {}).get("callbacks") or []:
        if isinstance(cb, dict) and cb.get("class_path", "").endswith("RobustnessMonitor"):
            cb.setdefault("init_args", {})["num_samples"] = 4
            cb["init_args"]["batch_size"] = 4
    return cfg


CONFIGS = training_configs()


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


def test_configs_were_found() -> None:
    names = {p.name for p in CONFIGS}
    assert "quickstart.yaml" in names and len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=[_name(p) for p in CONFIGS])
def test_config_parses_and_runs_one_step(path: Path, tmp_path: Path) -> None:
    cfg = shrink(resolved(path))
    cfg.setdefault("trainer", {}).update({"accelerator": "cpu", "devices": 1,
                                          "enable_progress_bar": False})
    for key in ("strategy", "num_nodes", "precision"):
        cfg["trainer"].pop(key, None)
    tiny = tmp_path / path.name
    tiny.write_text(yaml.safe_dump(cfg))
    args = ["--config", str(tiny), "--log_dir", str(tmp_path / "logs"), "--skip_test", "true"]
    if _name(path) in UNTRAINED_NON_FINITE:
        # one optimizer step leaves BatchNorm's running statistics at their initial values; the
        # sign-weight activations of these deep BNNs then overflow in eval mode. Validation
        # must refuse that network instead of scoring it ...
        with pytest.raises(ValueError, match="non-finite logits"):
            train_main([*args, "--trainer.fast_dev_run", "1"])
        # ... and the training step itself runs
        args += ["--trainer.max_steps", "1", "--trainer.limit_train_batches", "1",
                 "--trainer.limit_val_batches", "0", "--trainer.max_epochs", "1"]
    else:
        args += ["--trainer.fast_dev_run", "1"]
    metrics = train_main(args)
    assert isinstance(metrics, dict)


#: configs whose network, one step into training, gives non-finite logits in eval mode
UNTRAINED_NON_FINITE = {"cifar10/resnet50_wq.yaml", "cifar10/densenet121_wq.yaml",
                        "paper/train/cifar100_resnet50_wq.yaml",
                        "paper/train/cifar100_densenet121_wq.yaml"}


# ----------------------------------------------------------------------------- composition


def _composed() -> list[Path]:
    return [p for p in CONFIGS if any(_name(p).startswith(f"{d}/") for d in COMPOSED)]


def _canonical(node: Any, base: Path) -> Any:
    """``node`` with every ``*.yaml`` string replaced by the file it names, relative to configs/
    (so recipes in folders of different depths compare equal)."""
    if isinstance(node, dict):
        return {k: _canonical(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [_canonical(v, base) for v in node]
    if isinstance(node, str) and node.endswith(".yaml"):
        return str((base / node).resolve().relative_to(ROOT / "configs"))
    return node


def _raw(path: Path) -> dict:
    return _canonical(yaml.safe_load(path.read_text()), path.parent)


def _get(cfg: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        cfg = cfg[key]
    return cfg


def test_cifar_recipes_take_each_section_from_one_component_file() -> None:
    recipes = _composed()
    assert len(recipes) >= 29
    used: set[str] = set()
    for path in recipes:
        cfg = _raw(path)
        for keys, folder in SECTIONS.items():
            ref = _get(cfg, keys)
            assert isinstance(ref, str) and ref.startswith(f"components/{folder}/"), \
                f"{_name(path)}: {'.'.join(keys)} should name a file of components/{folder}/, " \
                f"got {ref!r}"
            assert (ROOT / "configs" / ref).is_file(), f"{_name(path)} names {ref}, which is missing"
            used.add(ref)
    # no component is left unused, and none is itself picked up as a recipe
    components = {str(p.relative_to(ROOT / "configs")) for p in COMPONENTS.rglob("*.yaml")}
    assert components - used == set(), f"unused components: {sorted(components - used)}"
    assert not [p for p in CONFIGS if COMPONENTS in p.parents]


def test_cifar10_and_cifar100_variants_differ_in_the_data_file_only() -> None:
    data = {name: COMPONENTS / "datasets" / f"{name}.yaml" for name in ("cifar10", "cifar100")}
    # the two data files differ in the data module alone (same batch size and options)
    ten, hundred = (yaml.safe_load(p.read_text()) for p in data.values())
    assert ten.pop("class_path") == "bnnrobust.data.CIFAR10DataModule"
    assert hundred.pop("class_path") == "bnnrobust.data.CIFAR100DataModule"
    assert ten == hundred

    def without_data(path: Path) -> dict:
        return {k: v for k, v in _raw(path).items() if k != "data"}

    by_data: dict[str, list[Path]] = {"components/datasets/cifar10.yaml": [],
                                      "components/datasets/cifar100.yaml": []}
    for path in _composed():
        by_data[_raw(path)["data"]].append(path)
    assert len(by_data["components/datasets/cifar100.yaml"]) >= 11
    for path in by_data["components/datasets/cifar100.yaml"]:
        twins = [q for q in by_data["components/datasets/cifar10.yaml"]
                 if without_data(q) == without_data(path)]
        assert len(twins) == 1, (f"{_name(path)}: expected one CIFAR-10 recipe identical but for "
                                 f"its data: file, found {[_name(q) for q in twins]}")
