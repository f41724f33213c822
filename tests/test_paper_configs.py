"""``configs/paper/``: every evaluation YAML loads through ``evaluate.py``'s parser and names
only known attacks; the README index covers every table/figure and points to files that exist;
its Python recipes (Tables 11 and 13) run.

The training YAMLs of ``configs/paper/train/`` are run for one step by ``tests/test_configs.py``
(every YAML with ``model:`` and ``data:`` keys); here we only check they are found there.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from torch import nn

from bnnrobust.attacks.factory import list_attacks
from bnnrobust.evaluation.cli import build_parser, resolve_attacks

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
README = PAPER / "README.md"


def _is_training(path: Path) -> bool:
    cfg = yaml.safe_load(path.read_text()) or {}
    return isinstance(cfg, dict) and "model" in cfg and "data" in cfg


EVAL_CONFIGS = sorted(p for p in PAPER.rglob("*.yaml") if not _is_training(p))
TRAIN_CONFIGS = sorted(p for p in PAPER.rglob("*.yaml") if _is_training(p))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(PAPER)) for p in paths]


def _base_name(spec: Any) -> str:
    name = spec["name"] if isinstance(spec, dict) else spec
    return str(name).strip().lower()


def _expand_braces(text: str) -> list[str]:
    """``a/{x,y}_{1,2}.yaml`` -> the four paths (shell brace expansion, no nesting)."""
    parts = re.split(r"(\{[^{}]*\})", text)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def test_configs_found() -> None:
    assert len(EVAL_CONFIGS) >= 12
    assert len(TRAIN_CONFIGS) >= 5
    assert all(p.parent.name == "train" for p in TRAIN_CONFIGS)


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=_ids(EVAL_CONFIGS))
def test_eval_config_parses_and_names_known_attacks(path: Path) -> None:
    cfg = build_parser().parse_args(["--config", str(path)])
    assert cfg.dataset in ("cifar10", "cifar100"), "paper configs are CIFAR experiments"
    assert isinstance(cfg.attacks, list) and cfg.attacks
    known = {*list_attacks(), "transfer"}
    for spec in cfg.attacks:
        assert _base_name(spec) in known, f"{path.name}: unknown attack {spec!r}"
        if _base_name(spec) == "transfer":  # the source is a training run's checkpoint
            assert re.fullmatch(r"logs/\w+/version_\d+/checkpoints/last\.ckpt", spec["source"]), spec

    def tiny_source(ckpt: str) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))

    # every argument accepted, no duplicate name
    built = resolve_attacks(cfg.attacks, cfg.dataset, load_source=tiny_source)
    assert len(built) == len(cfg.attacks)
    for sweep_spec in cfg.sweep_attacks or []:
        assert _base_name(sweep_spec) in known


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=_ids(EVAL_CONFIGS))
def test_eval_config_names_existing_training_configs(path: Path) -> None:
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    named = [m for line in header for m in re.findall(r"configs/[\w./{},-]+\.yaml", line)]
    named = [p for m in named for p in _expand_braces(m) if p != f"configs/paper/{path.name}"]
    assert named, f"{path.name} names no training config in its header"
    for rel in named:
        assert (ROOT / rel).is_file(), f"{path.name} names {rel}, which does not exist"


def test_training_configs_are_run_by_test_configs() -> None:
    from tests.test_configs import training_configs

    found = set(training_configs())
    for path in TRAIN_CONFIGS:
        assert path in found


def test_readme_index_covers_every_experiment() -> None:
    text = README.read_text()
    index = [line for line in text.splitlines() if line.startswith("| Table") or
             line.startswith("| Fig")]
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13):
        assert any(re.match(rf"\| Table {n}\b", line) for line in index), f"Table {n} missing"
    for fig in ("1a", "1b", "1c", "4"):
        assert any(line.startswith(f"| Fig. {fig}") for line in index), f"Fig. {fig} missing"
    assert "## Reproduction" in text and "python -m bnnrobust.reproduce --out results/fmnist" in text


def test_readme_paths_exist_and_every_config_is_indexed() -> None:
    text = README.read_text()
    paths = set(re.findall(r"configs/[A-Za-z0-9_./-]+\.yaml", text))
    assert len(paths) >= 30
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"README points to missing files: {missing}"
    for path in EVAL_CONFIGS + TRAIN_CONFIGS:
        rel = str(path.relative_to(ROOT))
        assert rel in paths, f"{rel} is not in the README index"


def _python_block(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None, heading
    return block.group(1)


@pytest.mark.parametrize("heading", ["### Table 11", "### Table 13", "### Fig. 1c"])
def test_readme_python_recipes_run(heading: str, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import bnnrobust.evaluation as ev
    from bnnrobust.data import SyntheticDataModule
    from bnnrobust.models import create_model

    model = create_model("convnet", num_classes=10, in_channels=1, width=0.25,
                         binarizer="md_tanh_s").eval()
    dm = SyntheticDataModule(num_samples=16, image_size=28, batch_size=8)
    monkeypatch.setattr(ev, "load_system", lambda *a, **k: (SimpleNamespace(model=model), dm))
    code = _python_block(heading).replace("N = 1000", "N = 4")
    if heading == "### Fig. 1c":  # the examples saved by the first step
        from bnnrobust.attacks.factory import build_attack

        dm.setup("test")

        xs, ys = ev.runner.SampleSource(dm.test_set, 4).get(0, 4)
        ev.evaluate(model, (xs, ys), {"pgd": build_attack("pgd", dataset="cifar10", steps=1)},
                    progress=False, save_adv=tmp_path / "adv")
        code = code.replace('"logs/paper_fig1c_adv"', repr(str(tmp_path / "adv")))
    exec(compile(code, f"README {heading}", "exec"), {"__name__": "readme_recipe"})
    out = capsys.readouterr().out
    assert "%" in out
