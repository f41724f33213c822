"""evaluate(partial_results=...): finished attacks are kept as they finish and a rerun resumes;
per-sample masks; evaluate.py checks its outputs before the first attack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.attacks import FGSM, PGD
from bnnrobust.attacks.base import Attack, AttackOutput
from bnnrobust.evaluation import evaluate
from bnnrobust.evaluation.accounting import SampleTally
from tests.helpers_models import result_numbers, tiny_mlp


class Counting(Attack):
    """Wraps an attack; counts calls; ``fail_at`` makes that call raise (a killed run)."""

    def __init__(self, inner: Attack, fail_at: int | None = None) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = inner, 0, fail_at
        self.name = inner.name

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None) -> AttackOutput:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("killed")
        return self.inner.perturb(model, x, y)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def _model() -> nn.Module:
    return tiny_mlp()


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 4, (40,), generator=g)


def _attacks(fail_at: int | None = None) -> dict[str, Any]:
    return {"fgsm": Counting(FGSM(eps=0.1)),
            "pgd": Counting(PGD(eps=0.1, step_size=0.03, steps=3)),
            "pgd++njs": Counting(PGD(eps=0.1, step_size=0.03, steps=3, temperature="njs"),
                                 fail_at=fail_at)}


def test_an_interrupted_evaluation_keeps_finished_attacks_and_resumes(tmp_path: Path) -> None:
    model, (x, y) = _model(), _data()
    full = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    partial = tmp_path / "results.partial.json"
    killed = _attacks(fail_at=2)  # pgd++njs dies on its second batch
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, (x, y), killed, seed=0, batch_size=16, progress=False,
                 partial_results=partial)
    kept = json.loads(partial.read_text())
    assert sorted(kept["attacks"]) == ["fgsm", "pgd"]
    again = _attacks()
    res = evaluate(model, (x, y), again, seed=0, batch_size=16, progress=False,
                   partial_results=partial)
    assert again["fgsm"].calls == 0 and again["pgd"].calls == 0  # taken from the file
    assert again["pgd++njs"].calls == 3  # 40 samples, batches of 16
    assert res.extra["resumed"] == ["fgsm", "pgd"]
    assert result_numbers(res) == result_numbers(full)
    for name in full.masks:
        assert torch.equal(res.masks[name], full.masks[name])


def test_another_model_or_setting_is_not_resumed(tmp_path: Path) -> None:
    model, (x, y) = _model(), _data()
    partial = tmp_path / "p.json"
    evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False,
             partial_results=partial)
    with torch.no_grad():
        model[1].weight.data += 0.5
    again = _attacks()
    evaluate(model, (x, y), again, seed=0, batch_size=16, progress=False, partial_results=partial)
    assert again["fgsm"].calls > 0  # other weights: nothing reused
    again = _attacks()
    evaluate(model, (x, y), again, seed=1, batch_size=16, progress=False, partial_results=partial)
    assert again["pgd"].calls > 0  # another seed: nothing reused
    changed = _attacks()
    changed["pgd"] = Counting(PGD(eps=0.05, step_size=0.03, steps=3))
    evaluate(model, (x, y), changed, seed=1, batch_size=16, progress=False,
             partial_results=partial)
    assert changed["pgd"].calls > 0 and changed["fgsm"].calls == 0  # only the changed attack


def test_per_sample_masks_agree_with_the_counts() -> None:
    model, (x, y) = _model(), _data()
    res = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert res.clean_mask is not None and torch.equal(res.clean_mask, clean)
    for name, mask in res.masks.items():
        assert int(mask.sum()) == res.attacks[name].correct
        assert not bool((mask & ~clean).any())  # robust implies clean-correct
    worst = res.robust_mask
    assert worst is not None
    assert 100.0 * int(worst.sum()) / 40 == pytest.approx(res.worst_case_acc)
    assert "masks" not in res.to_dict() and "clean_mask" not in res.to_dict()


def test_sample_tally_counts_and_beta() -> None:
    t = SampleTally(5)
    t.update(torch.tensor([0, 1]), torch.tensor([True, False]), attacked=2,
             beta=torch.tensor([1.0, 3.0]), seconds=0.5)
    t.update(torch.tensor([4]), torch.tensor([True]), attacked=1, beta=torch.tensor([2.0]))
    r = t.compute()
    assert r.mask.tolist() == [True, False, False, False, True]
    assert (r.correct, r.attacked, r.seconds) == (2, 3, 0.5)
    assert r.beta is not None and (r.beta.count, r.beta.min, r.beta.max) == (3, 1.0, 3.0)
    assert r.beta.mean == pytest.approx(2.0) and r.beta.std == pytest.approx((2 / 3) ** 0.5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        SampleTally(5).update(torch.tensor([5]), torch.tensor([True]))


# -- evaluate.py ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers_models import train_tiny

    return train_tiny(str(tmp_path_factory.mktemp("resume_run")), network="tiny")[0]


def _no_attack_may_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import bnnrobust.evaluation.runner as runner

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an attack ran before the request was refused")

    monkeypatch.setattr(runner, "evaluate", refuse)


@pytest.mark.parametrize("args,needle", [
    (["--output", "{file}/r.json"], "is not a folder"),
    (["--save_adv", "{file}"], "is not a folder"),
    (["--output", "{tmp}/dir.json"], "is a folder"),
    (["--sweep", "--sweep_eps", "0.1", "-0.05"], "-0.05"),
    (["--sweep", "--sweep_attacks", "pgd_typo"], "pgd_typo"),
    (["--sweep", "--sweep_attacks", "deepfool"], "no eps budget"),
    (["--diagnose", "--diagnose_n", "0"], "--diagnose_n"),
    (["--diagnose", "--diagnose_eps", "8"], "--diagnose_eps"),
    (["--signal_propagation", "--signal_n", "0"], "--signal_n"),
])
def test_evaluate_py_refuses_bad_outputs_and_options_before_any_attack(
        tiny_ckpt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, args: list[str], needle: str) -> None:
    from bnnrobust.evaluation.cli import main as eval_main

    a_file = tmp_path / "plain_file"
    a_file.write_text("x")
    (tmp_path / "dir.json").mkdir()
    args = [a.format(file=a_file, tmp=tmp_path) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out" / "r.json")]
    _no_attack_may_run(monkeypatch)
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", tiny_ckpt, "--attacks", "fgsm", "--n", "8", "--progress", "false",
                   *args])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.startswith("error:") and needle in msg, msg
    assert "Traceback" not in msg


def test_evaluate_py_resumes_an_interrupted_run(tiny_ckpt: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    import bnnrobust.evaluation.runner as runner
    from bnnrobust.evaluation.cli import main as eval_main

    out = tmp_path / "r.json"
    argv = ["--ckpt", tiny_ckpt, "--attacks", "fgsm", "{name: pgd, steps: 2}", "--n", "24",
            "--batch_size", "8", "--progress", "false", "--output", str(out)]
    real = runner._run_attack
    ran: list[str] = []

    def dies_on_pgd(*args: Any, **kwargs: Any) -> Any:
        ran.append(args[3])
        if args[3] == "pgd" and len(ran) == 2 and "killed" not in ran:
            ran.append("killed")
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_attack", dies_on_pgd)
    with pytest.raises(KeyboardInterrupt):
        eval_main(argv)
    partial = tmp_path / "r.partial.json"
    assert list(json.loads(partial.read_text())["attacks"]) == ["fgsm"]
    capsys.readouterr()
    ran.clear()
    ran.append("killed")
    body = eval_main(argv)
    assert ran == ["killed", "pgd"]  # fgsm came from the file
    assert body["resumed"] == ["fgsm"] and "resumed: fgsm" in capsys.readouterr().err
    assert out.is_file() and not partial.exists()
    monkeypatch.setattr(runner, "_run_attack", real)
    fresh = eval_main([*argv[:-1], str(tmp_path / "fresh.json")])
    for name in ("fgsm", "pgd"):
        assert body["attacks"][name]["correct"] == fresh["attacks"][name]["correct"]
    assert body["worst_case_acc"] == fresh["worst_case_acc"]


def test_model_digest_covers_zero_dim_buffers() -> None:
    from bnnrobust.evaluation.partial import model_digest

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))  # num_batches_tracked is 0-dim
    before = model_digest(net)
    net[1].num_batches_tracked += 1
    assert model_digest(net) != before
