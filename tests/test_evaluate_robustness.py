"""bnnrobust.evaluate_robustness (one-call evaluation, AutoAttack-style log), the Wilson
intervals of EvalResult.to_dict(), evaluate's on_attack hook and its pilot estimates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import bnnrobust
from bnnrobust.attacks import FGSM, PGD
from bnnrobust.attacks.factory import build_attack
from bnnrobust.attacks.presets import preset_attacks
from bnnrobust.evaluation import RobustnessResult, evaluate, evaluate_robustness
from bnnrobust.evaluation.runner import describe_budget
from bnnrobust.metrics.intervals import wilson_interval_percent
from tests.helpers_models import result_numbers, tiny_mlp

SPECS: list[Any] = [{"name": "pgd", "steps": 3, "label": "pgd3"},
                    {"name": "pgd++hns", "steps": 3}, "fgsm"]
NAMES = ["pgd3", "pgd++hns", "fgsm"]


def _model() -> nn.Module:
    """A tiny MLP whose predictions vary with the input (all four classes on _data)."""
    return tiny_mlp(centred=True).eval()


def _mask(mask: Tensor | None) -> Tensor:
    assert mask is not None
    return mask


def _data(model: nn.Module, n: int = 40) -> tuple[Tensor, Tensor]:
    """Labels = the model's own predictions, every 5th flipped: clean accuracy 80 %."""
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return x, y


def _attacks() -> dict[str, Any]:
    return {name: build_attack(spec, "synthetic") for name, spec in zip(NAMES, SPECS, strict=True)}


# -- the one-call evaluation ------------------------------------------------------------------
def test_log_lines_and_numbers_equal_evaluate(capsys: pytest.CaptureFixture) -> None:
    model = _model()
    x, y = _data(model)
    res = bnnrobust.evaluate_robustness(model, (x, y), SPECS, dataset="synthetic",
                                        batch_size=16, progress=False)
    out = capsys.readouterr().out.splitlines()
    ref = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    assert isinstance(res, RobustnessResult)
    assert result_numbers(res) == result_numbers(ref)
    assert out[0] == f"clean accuracy: {ref.clean_acc:.2f} %"
    worst = _mask(ref.clean_mask).clone()
    for line, name in zip(out[1:4], NAMES, strict=True):
        worst &= ref.masks[name]
        m = re.fullmatch(rf"{re.escape(name)}: robust accuracy (\d+\.\d\d) % \(worst case so "
                         rf"far (\d+\.\d\d) %\), \d+\.\d s", line)
        assert m, line
        assert m.group(1) == f"{ref.attacks[name].adv_acc:.2f}"
        assert m.group(2) == f"{100.0 * int(worst.sum()) / ref.n:.2f}"
    assert out[4].startswith(f"robust accuracy: {ref.worst_case_acc:.2f} % (95 % CI ")
    assert len(out) == 5
    assert res.extra["dataset"] == "synthetic" and res.to_dict()["dataset"] == "synthetic"


def test_dataloader_dataset_and_tensors_agree_and_the_robust_mask_is_the_worst_case() -> None:
    model = _model()
    x, y = _data(model)
    kw: dict[str, Any] = dict(dataset="synthetic", log=False, batch_size=16)
    a = evaluate_robustness(model, (x, y), SPECS, **kw)
    b = evaluate_robustness(model, DataLoader(TensorDataset(x, y), batch_size=16), SPECS, **kw)
    c = evaluate_robustness(model, TensorDataset(x, y), SPECS, **kw)
    assert result_numbers(a) == result_numbers(b) == result_numbers(c)
    for r in (a, b, c):
        assert r.robust_mask is not None and r.robust_mask.shape == (40,)
        assert 100.0 * r.robust_mask.float().mean().item() == pytest.approx(r.worst_case_acc)
    assert torch.equal(_mask(a.robust_mask), _mask(b.robust_mask))
    md = a.to_markdown("tiny")
    assert md.startswith("# tiny")
    for name in NAMES:
        assert f"| {name} |" in md
    assert "worst case" in md


def test_presets_single_names_and_attack_dicts() -> None:
    model = _model()
    x, y = _data(model, 16)
    quick = evaluate_robustness(model, (x, y), "quick", "synthetic", n=12, log=False)
    assert list(quick.attacks) == list(preset_attacks("synthetic", "quick")) and quick.n == 12
    one = evaluate_robustness(model, (x, y), "fgsm", "synthetic", log=False)
    given = evaluate_robustness(model, (x, y), {"fgsm": build_attack("fgsm", "synthetic")},
                                "synthetic", log=False)
    assert list(one.attacks) == list(given.attacks) == ["fgsm"]
    assert result_numbers(one) == result_numbers(given)  # same attack, name and seed: same random starts
    other = evaluate_robustness(model, (x, y), {"mine": FGSM(eps=0.1)}, "synthetic", log=False)
    assert list(other.attacks) == ["mine"]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(attacks="strongest!"), r"attacks='strongest!' is neither a preset .*'paper', "
                                 r"'strongest', 'quick'.*known: .*pgd"),
    (dict(attacks=["pgd", "no-such-attack"]), r"bad attack 'no-such-attack'"),
    (dict(attacks=[]), r"attacks is empty"),
    (dict(attacks=42), r"attacks must be a preset name"),
    (dict(attacks=["fgsm", "fgsm"]), r"'fgsm' appears twice"),
    (dict(dataset="imagenet"), r"unknown dataset 'imagenet'; accepted: 'cifar10'"),
    (dict(n=0), r"n must be a positive integer .* got 0"),
    (dict(n=True), r"n must be a positive integer"),
    (dict(data="images/"), r"data must be \(x, y\) tensors, a DataLoader or a Dataset, got str"),
    (dict(data="tensor"), r"a single tensor \(labels missing\)"),
    (dict(data="3-tuple"), r"got a tuple of 3 item\(s\)"),
    (dict(data="shapes"), r"got x \(8, 1, 4, 4\) and y \(7,\)"),
    (dict(save_advs="adv/"), r"unknown option\(s\) 'save_advs'; accepted: save_adv"),
])
def test_bad_input_is_one_clear_value_error(kwargs: dict[str, Any], match: str) -> None:
    model = _model()
    x, y = _data(model, 8)
    data: Any = {"images/": "images/", "tensor": x, "3-tuple": (x, y, y),
                 "shapes": (x, y[:7])}.get(kwargs.pop("data", ""), (x, y))
    args: dict[str, Any] = dict(attacks="fgsm", dataset="synthetic", log=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_robustness(model, data, **args)


# -- Wilson intervals in the JSON -------------------------------------------------------------
def test_to_dict_carries_wilson_intervals() -> None:
    model = _model()
    x, y = _data(model)
    res = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    d = json.loads(json.dumps(res.to_dict()))
    pairs = [(d["clean_ci95"], d["clean_acc"], d["clean_correct"]),
             (d["worst_case_ci95"], d["worst_case_acc"], int(_mask(res.robust_mask).sum()))]
    pairs += [(a["ci95"], a["adv_acc"], a["correct"]) for a in d["attacks"].values()]
    assert len(pairs) == 2 + len(NAMES)
    for ci, acc, correct in pairs:
        assert ci == list(wilson_interval_percent(correct, d["n"]))
        assert ci[0] <= acc <= ci[1] and 0.0 <= ci[0] < ci[1] <= 100.0
    none = evaluate(model, (x, y), {}, progress=False).to_dict()
    assert none["worst_case_acc"] is None and none["worst_case_ci95"] is None


# -- evaluate: the on_attack hook, the pilot, one bar per attack --------------------------------
def _random_start_attacks() -> dict[str, Any]:
    """Attacks that draw from torch's global RNG (random start, no own seed)."""
    return {"fgsm": FGSM(eps=0.1), "pgd": PGD(eps=0.1, step_size=0.03, steps=3),
            "pgd++njs": PGD(eps=0.1, step_size=0.03, steps=3, temperature="njs")}


def test_pilot_prints_an_estimate_per_attack_and_changes_no_result(
        capsys: pytest.CaptureFixture) -> None:
    model = _model()
    x, y = _data(model)
    quiet = evaluate(model, (x, y), _random_start_attacks(), seed=3, batch_size=16,
                     progress=False)
    assert capsys.readouterr().err == ""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loud = evaluate(model, (x, y), _random_start_attacks(), seed=3, batch_size=16, progress=True)
    assert torch.equal(torch.get_rng_state(), before)
    err = capsys.readouterr().err
    assert result_numbers(loud) == result_numbers(quiet)
    assert torch.equal(_mask(loud.clean_mask), _mask(quiet.clean_mask))
    for name in quiet.attacks:
        assert torch.equal(loud.masks[name], quiet.masks[name])
    lines = [ln for ln in err.splitlines() if "estimated" in ln]
    assert [ln.split(":")[0] for ln in lines] == list(quiet.attacks)
    n_attacked = quiet.clean_correct
    assert lines[1].startswith("pgd: 3 steps x 1 restart, eps 0.1 (L∞) — estimated ")
    assert f"for {n_attacked} samples (pilot 8 samples in " in lines[1]
    assert lines[0].startswith("fgsm: 1 step, eps 0.1 (L∞) — estimated ")
    for name in ("clean", *quiet.attacks):  # one tqdm bar per pass, each with its own total
        assert re.search(rf"{re.escape(name)}: 100%\|.*\| 40/40 ", err), name
    capsys.readouterr()
    evaluate(model, (x, y), _random_start_attacks(), seed=3, batch_size=16, progress=True,
             pilot=False)
    assert "estimated" not in capsys.readouterr().err


def test_on_attack_is_called_after_each_attack_also_when_resumed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = _model()
    x, y = _data(model)
    calls: list[tuple[str, Any, Tensor]] = []
    partial = tmp_path / "partial.json"
    res = evaluate(model, (x, y), _random_start_attacks(), batch_size=16, progress=False,
                   partial_results=partial, on_attack=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == list(res.attacks)
    for name, result, mask in calls:
        assert result is res.attacks[name] and torch.equal(mask, res.masks[name])
    calls.clear()
    again = evaluate(model, (x, y), _random_start_attacks(), batch_size=16, progress=True,
                     partial_results=partial, on_attack=lambda *a: calls.append(a))
    err = capsys.readouterr().err
    assert again.extra["resumed"] == list(res.attacks)
    assert [c[0] for c in calls] == list(res.attacks)
    assert all(torch.equal(m, res.masks[nm]) for nm, _, m in calls)
    assert "estimated" not in err and "pgd: finished in an earlier run" in err


def test_describe_budget_reads_any_describe() -> None:
    assert describe_budget(PGD(eps=8 / 255, step_size=2 / 255, steps=20).describe()) \
        == "20 steps x 1 restart, eps 0.03137 = 8/255 (L∞)"
    assert describe_budget(build_attack("square", "fmnist").describe()) \
        == "5000 queries x 1 restart, eps 0.1 (L∞)"
    assert describe_budget(build_attack("pgd_l2", "fmnist").describe()).endswith("eps 1.5 (L2)")
    casc: Any = preset_attacks("cifar10", "strongest")["strongest"]
    assert describe_budget(casc.describe()).startswith("cascade of 6 attacks (apgd-ce++hns, ")
    wrapped = casc.attacks[4].describe()  # the sign-activations-only stage wraps an APGD
    assert describe_budget(wrapped) == "100 steps x 1 restart, eps 0.03137 = 8/255 (L∞)"
    assert describe_budget({}) == ""
    assert describe_budget({"name": "x", "steps": True, "eps": "big", "norm": 3}) == ""
    assert describe_budget({"eps": 0.5}) == "eps 0.5"
