"""The attack registry agrees with build_attack, the presets and docs/attacks.md; labels."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.attacks import build_attack, list_attacks, preset_attacks
from bnnrobust.attacks import registry as reg
from bnnrobust.attacks.base import Attack, AttackOutput, Norm
from bnnrobust.attacks.cascade import Cascade
from bnnrobust.attacks.presets import OnlyWithSignActivations, get_preset
from bnnrobust.attacks.registry import (
    TABLE_END,
    TABLE_START,
    TEMPERATURE_SUFFIXES,
    attack_entries,
    attack_table_markdown,
    find_attack,
    register_attack,
    replace_attack_table,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "attacks.md"
ENTRIES = attack_entries()
NAMES = [e.name for e in ENTRIES]
ALL_KEYS = [k for e in ENTRIES for k in (e.name, *e.aliases)]
# small budgets so that every attack runs in well under a second on the tiny model
FAST = {"steps": 2, "n_queries": 20}


def _fast(name: str) -> dict[str, int]:
    entry = find_attack(name.partition("++")[0])
    assert entry is not None
    return {k: v for k, v in FAST.items() if k in entry.parameters()}


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(4, 1, 8, 8)
    return model, x, model(x).argmax(1).detach()


def test_the_registry_holds_the_attacks_of_the_factory() -> None:
    assert NAMES == ["fgsm", "pgd", "pgd_l2", "pgd_dlr", "apgd-ce", "apgd-dlr", "apgd-t",
                     "square", "deepfool", "ta-apgd-ce", "ta-apgd-dlr", "ta-apgd-t", "ta-fab-t",
                     "strongest"]
    assert list_attacks() == [n for e in ENTRIES for n in e.listed_names()]
    assert list_attacks("apgd-*") == ["apgd-ce", "apgd-ce++njs", "apgd-ce++hns", "apgd-dlr",
                                      "apgd-t"]
    assert len(ALL_KEYS) == len(set(ALL_KEYS))
    assert all(e.description and "\n" not in e.description for e in ENTRIES)


@pytest.mark.parametrize("name", list_attacks())
def test_every_listed_name_builds_and_runs(name: str, tiny) -> None:
    model, x, y = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the strongest cascade warns: the model has no signs
        atk: Any = build_attack(name, "fmnist", **_fast(name))
        # the name the attack reports builds the same attack back
        assert build_attack(atk.name, "fmnist", **_fast(name)).describe() == atk.describe()
        x_adv = atk(model, x, y)
    assert x_adv.shape == x.shape and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    if getattr(atk, "eps", None) is not None:
        d = (x_adv - x).flatten(1)
        size = d.norm(dim=1) if atk.norm is Norm.L2 else d.abs().amax(1)
        assert float(size.max()) <= atk.eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("key", ALL_KEYS)
def test_temperature_flag_is_exactly_the_suffixes_accepted(key: str) -> None:
    entry = find_attack(key)
    assert entry is not None
    for temp in TEMPERATURE_SUFFIXES:
        if entry.temperature:
            atk: Any = build_attack(f"{key}++{temp}")
            assert atk.temperature is not None and atk.temperature.name == temp
        else:
            with pytest.raises(ValueError, match="Unknown attack"):
                build_attack(f"{key}++{temp}")


def test_the_tempered_attacks() -> None:
    assert [e.name for e in ENTRIES if e.temperature] == \
        ["fgsm", "pgd", "pgd_l2", "pgd_dlr", "apgd-ce"]
    assert build_attack("apgd++hns").describe() == build_attack("apgd-ce++hns").describe()


@pytest.mark.parametrize("name", NAMES)
def test_l2_and_surrogate_flags_agree_with_build_attack(name: str) -> None:
    entry = find_attack(name)
    assert entry is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if entry.l2_variant:
            atk: Any = build_attack(f"{name}_l2", "fmnist")
            assert atk.norm is Norm.L2 and atk.eps == pytest.approx(1.5)  # the fmnist L2 row
        else:
            with pytest.raises(ValueError, match="Unknown attack"):
                build_attack(f"{name}_l2")
        if entry.surrogate:
            atk = build_attack({"name": name, "surrogate": "tanh:5"})
            if isinstance(atk, Cascade):  # strongest: the surrogate of its stage 5
                atk = next(a for a in atk.attacks if isinstance(a, OnlyWithSignActivations))
                atk = atk.attack
            assert atk.surrogate == "tanh:5"
        else:
            with pytest.raises(ValueError, match="Unknown argument 'surrogate'"):
                build_attack({"name": name, "surrogate": "tanh:5"})


@pytest.mark.parametrize("name", NAMES)
def test_fixed_arguments_and_budgets(name: str) -> None:
    entry = find_attack(name)
    assert entry is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atk: Any = build_attack(name, "cifar100")
    for key, value in entry.fixed.items():
        got = getattr(atk, key)
        assert str(getattr(got, "value", got)).lower() == str(value).lower()
        other = {"norm": "linf", "targeted": False}.get(key, "dlr" if value == "ce" else "ce")
        with pytest.raises(ValueError, match=f"fixes {key}="):
            build_attack({"name": name, key: other})
    p = get_preset("cifar100")
    norm = atk.norm if isinstance(getattr(atk, "norm", None), Norm) else Norm.LINF
    if entry.budget == "none":
        assert not hasattr(atk, "eps")
    elif entry.budget == "fgsm":
        assert (atk.eps, atk.step_size) == pytest.approx((p.fgsm.eps, p.fgsm.step_size))
    else:
        assert atk.eps == pytest.approx(p.budget(norm).eps)
        if entry.budget == "pgd":
            assert (atk.step_size, atk.steps) == \
                pytest.approx((p.budget(norm).step_size, p.budget(norm).steps))


@pytest.mark.parametrize("typo,close", [("pgdd", "pgd"), ("squre", "square"),
                                        ("apgd-dl", "apgd-dlr"), ("stronges", "strongest")])
def test_unknown_name_names_close_matches(typo: str, close: str) -> None:
    with pytest.raises(ValueError) as err:
        build_attack(typo)
    msg = str(err.value)
    assert msg.startswith(f"Unknown attack {typo!r}. Did you mean ")
    assert repr(close) in msg.split("Known names:")[0]
    assert f"Known names: {', '.join(list_attacks())};" in msg
    assert "the temperature of fgsm, pgd, pgd_l2, pgd_dlr, apgd-ce;" in msg


@pytest.mark.parametrize("bad", ["strongest++hns", "deepfool_l2", "pgd_l2_l2", "pgd++xyz",
                                 "apgd-dlr++njs", "cascade_l2", ""])
def test_names_the_registry_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="Unknown attack"):
        build_attack(bad)


# ------------------------------------------------------------------------------- labels


def test_label_sets_the_name_everywhere() -> None:
    plain = build_attack({"name": "pgd", "eps": 0.05})
    atk = build_attack({"name": "pgd", "eps": 0.05, "label": "pgd_eps0.05"})
    assert atk.name == "pgd_eps0.05" and atk.describe()["name"] == "pgd_eps0.05"
    assert {**atk.describe(), "name": plain.name} == plain.describe()
    assert build_attack("apgd-ce++hns", "fmnist", label="mine").name == "mine"
    assert build_attack({"name": "square", "label": "sq"}).name == "sq"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert build_attack({"name": "strongest", "steps": 2, "label": "worst"}).name == "worst"
    casc: Any = build_attack({"name": "cascade", "attacks": [{"name": "pgd", "label": "inner"},
                                                        "apgd-ce"], "label": "outer"})
    assert casc.name == "outer" and [a.name for a in casc.attacks] == ["inner", "apgd-ce"]
    src = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    tr = build_attack({"name": "transfer", "source": src, "attack": {"name": "pgd",
                                                                     "label": "p"}})
    assert tr.name == "transfer(p)"
    assert build_attack({"name": "transfer", "source": src, "label": "t"}).name == "t"
    assert build_attack({"name": "pgd", "label": None}).name == "pgd"


@pytest.mark.parametrize("label", ["", "  ", 3])
def test_bad_labels(label: object) -> None:
    with pytest.raises(ValueError, match="'label'.*non-empty string"):
        build_attack({"name": "pgd", "label": label})


def test_a_misspelt_label_is_pointed_at() -> None:
    with pytest.raises(ValueError, match="Unknown argument 'lable'.*Did you mean 'label'"):
        build_attack({"name": "pgd", "lable": "x"})


def test_labels_name_the_classifier_metrics() -> None:
    from bnnrobust.systems.classifier import ImageClassifier

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    system = ImageClassifier(model, num_classes=10, attack_dataset="fmnist", test_attacks=[
        {"name": "pgd", "label": "pgd_a"}, {"name": "pgd", "eps": 0.05, "label": "pgd_b"}])
    assert [a.name for a in system.test_attacks] == ["pgd_a", "pgd_b"]
    assert sorted(system.test_attack_acc) == ["pgd_a", "pgd_b"]


# ------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fmnist"])
def test_presets_use_the_registered_names(dataset: str) -> None:
    p = get_preset(dataset)
    paper: dict[str, Any] = preset_attacks(dataset, "paper", seed=5)
    assert list(paper) == [n for b in ("fgsm", "pgd", "pgd_l2") for n in
                           (b, f"{b}++njs", f"{b}++hns")]
    for name, atk in paper.items():
        base = name.partition("++")[0]
        row = p.fgsm if base == "fgsm" else p.budget("l2" if base == "pgd_l2" else "linf")
        assert (atk.eps, atk.step_size, atk.steps, atk.seed) == \
            pytest.approx((row.eps, row.step_size, row.steps, 5))
    quick: dict[str, Any] = preset_attacks(dataset, "quick")
    assert list(quick) == ["pgd", "pgd++njs", "pgd++hns"]
    b = p.pgd_linf
    for atk in quick.values():
        assert atk.steps == min(5, b.steps) and atk.seed is None
        assert atk.step_size == pytest.approx(max(b.step_size, 2.5 * b.eps / atk.steps))


# ------------------------------------------------------------------------- registration


class _Dummy(Attack):
    """Returns the input: enough to register and build."""

    def __init__(self, eps: float = 0.1, norm: str | Norm = "linf",
                 seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self.eps, self.norm, self.name = float(eps), Norm.parse(norm), "dummy"

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: object) -> AttackOutput:
        return AttackOutput(x.clone())


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry for this test only."""
    copy = dict(reg.ATTACK_REGISTRY)
    monkeypatch.setattr(reg, "ATTACK_REGISTRY", copy)
    return copy


def test_a_registered_attack_is_built_listed_and_tabled(scratch_registry: dict) -> None:
    register_attack("dummy", aliases=("dummy-alias",), l2_variant=True,
                    description="does nothing")(_Dummy)
    assert list_attacks()[-1] == "dummy" and find_attack("dummy-alias") is find_attack("dummy")
    atk = build_attack("dummy-alias_l2", "fmnist")
    assert isinstance(atk, _Dummy) and atk.norm is Norm.L2 and atk.eps == 1.5
    assert attack_table_markdown().splitlines()[-1] == \
        "| `dummy` | `dummy-alias` | — | yes | — | eps: PGD row of the norm | does nothing |"
    with pytest.raises(ValueError, match="Unknown attack 'dummy\\+\\+hns'"):
        build_attack("dummy++hns")


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": True}, "takes no temperature"),
    ({"surrogate": True}, "surrogate=True but the builder takes no 'surrogate'"),
    ({"fixed": {"loss": "ce"}}, "takes no loss"),
    ({"budget": "pgd"}, "takes no step_size, steps"),
    ({"budget": "huge"}, "budget 'huge'"),
    ({"description": "two\nlines"}, "one non-empty line"),
    ({"aliases": ("Bad Alias",)}, "alias 'Bad Alias'"),
])
def test_registration_checks_flags_against_the_signature(scratch_registry: dict, kwargs: dict,
                                                          match: str) -> None:
    args = {"description": "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        register_attack("dummy", **args)(_Dummy)
    assert "dummy" not in scratch_registry


@pytest.mark.parametrize("name", ["pgd", "pgd-dlr", "cascade", "pgd++hns", "PGD"])
def test_taken_or_bad_names_are_refused(scratch_registry: dict, name: str) -> None:
    before = dict(scratch_registry)
    with pytest.raises(ValueError, match="already registered|must be lower case"):
        register_attack(name, description="x")(_Dummy)
    assert scratch_registry == before


# ------------------------------------------------------------------------------- docs


def test_docs_table_is_the_rendered_one() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    block = text[text.index(TABLE_START) + len(TABLE_START):text.index(TABLE_END)].strip("\n")
    assert block == attack_table_markdown().strip("\n"), (
        "docs/attacks.md's attack table is out of date; regenerate it with "
        "`python -m bnnrobust.attacks.registry --write docs/attacks.md`")
    assert replace_attack_table(text) == text


def test_table_rows_follow_the_entries() -> None:
    rows = attack_table_markdown().splitlines()[2:]
    assert [r.split(" | ")[0].strip("| `") for r in rows] == NAMES
    pgd_dlr = rows[NAMES.index("pgd_dlr")]
    assert pgd_dlr.startswith("| `pgd_dlr` | `pgd-dlr` | yes | yes | yes | `loss=dlr`; ")
    assert rows[NAMES.index("deepfool")].startswith("| `deepfool` | — | — | — | — | ")


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reg.main(["--markdown"]) == 0
    assert capsys.readouterr().out == attack_table_markdown()
    doc = tmp_path / "a.md"
    doc.write_text(f"intro\n{TABLE_START}\nold\n{TABLE_END}\nrest\n", encoding="utf-8")
    assert reg.main(["--write", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == \
        f"intro\n{TABLE_START}\n{attack_table_markdown()}{TABLE_END}\nrest\n"
    with pytest.raises(ValueError, match="No <!-- attack-table:start -->"):
        replace_attack_table("no markers")


def test_describe_covers_every_constructor_argument() -> None:
    """describe() is derived from the signature: every argument an attack keeps (except the
    listed memory knobs) is in it, so a new argument cannot be left out of the description
    that evaluation resume and reports compare."""
    import inspect

    from bnnrobust.attacks.temperature import make_temperature

    seen = set()
    for name in list_attacks():
        atk = build_attack(name, "fmnist")
        if type(atk) in seen or type(atk).__name__ == "Cascade":  # a composite: its members
            continue
        seen.add(type(atk))
        desc = atk.describe()
        kept = [p for p in inspect.signature(type(atk).__init__).parameters
                if p != "self" and hasattr(atk, p) and p not in type(atk).describe_omit
                and not (p == "n_target_classes" and desc.get("loss") in ("ce", "dlr"))]
        assert kept and all(p in desc for p in kept), (name, kept, sorted(desc))
    assert "rho" in build_attack("ta-apgd-ce", "fmnist").describe()  # changes the result
    apgd = build_attack("apgd-ce++hns", "fmnist").describe()
    assert apgd["temperature"] == make_temperature("hns").describe()  # as PGD describes it
    assert "n_target_classes" not in apgd and "n_target_classes" in build_attack(
        "apgd-t", "fmnist").describe()
    njs = make_temperature({"name": "njs", "rho": 1e-5, "chunk_size": 4}).describe()
    assert njs == {"name": "njs", "n_jsv": 100, "rho": 1e-5, "beta1": None,
                   "jacobian_space": "normalized"}  # chunk_size: memory only
