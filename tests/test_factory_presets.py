"""build_attack / list_attacks and the dataset presets (paper Table 6, strongest, quick)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnrobust.attacks import build_attack, list_attacks, preset_attacks
from bnnrobust.attacks.apgd import APGD
from bnnrobust.attacks.base import Norm
from bnnrobust.attacks.cascade import Cascade
from bnnrobust.attacks.peers import (
    DeepFool,
    Square,
    TorchattacksAPGD,
    TorchattacksAPGDT,
    TorchattacksFAB,
)
from bnnrobust.attacks.pgd import FGSM, PGD
from bnnrobust.attacks.presets import (
    ADVERSARIAL_TRAINING,
    PRESETS,
    adversarial_training_attack,
    canonical_dataset,
    get_preset,
)

EXPECTED_CLASS = {
    "fgsm": FGSM, "pgd": PGD, "pgd_l2": PGD, "pgd_dlr": PGD, "apgd-ce": APGD, "apgd-dlr": APGD,
    "apgd-t": APGD, "square": Square, "deepfool": DeepFool, "ta-apgd-ce": TorchattacksAPGD,
    "ta-apgd-dlr": TorchattacksAPGD, "ta-apgd-t": TorchattacksAPGDT, "ta-fab-t": TorchattacksFAB,
    "strongest": Cascade,
}
BRIEF_NAMES = [
    "fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns", "pgd_l2", "pgd_l2++njs",
    "pgd_l2++hns", "pgd_dlr", "apgd-ce", "apgd-ce++njs", "apgd-ce++hns", "apgd-dlr", "apgd-t",
    "square", "deepfool", "ta-apgd-ce", "ta-apgd-dlr", "ta-apgd-t",
]


def test_list_contains_the_documented_names() -> None:
    names = list_attacks()
    assert set(BRIEF_NAMES) <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", list_attacks())
@pytest.mark.parametrize("dataset", [None, "fmnist", "cifar100"])
def test_every_name_builds(name: str, dataset: str | None) -> None:
    atk = build_attack(name, dataset)
    base, _, temp = name.partition("++")
    assert isinstance(atk, EXPECTED_CLASS[base])
    if temp:
        assert atk.temperature is not None and atk.temperature.name == temp
        assert atk.name.endswith("++" + temp)
    preset = get_preset(dataset or "cifar10")
    if base == "deepfool":
        return
    norm = Norm.L2 if base == "pgd_l2" else Norm.LINF
    row = preset.fgsm if base == "fgsm" else preset.budget(norm)
    assert atk.eps == pytest.approx(row.eps)
    if isinstance(atk, PGD):
        assert atk.norm is norm and atk.step_size == pytest.approx(row.step_size)
        assert atk.steps == row.steps


def test_names_match_the_attacks_names() -> None:
    for name in ["pgd", "pgd_l2++hns", "apgd-ce++njs", "apgd-t", "square", "ta-apgd-dlr", "fgsm"]:
        assert build_attack(name).name == name
    assert build_attack("pgd_dlr").loss == "dlr"
    # an attack's own name builds it back
    for name in ["pgd-dlr", "apgd-ce_l2", "square_l2", "fgsm_l2++hns", "ta-apgd-t_l2"]:
        atk = build_attack(name)
        assert atk.name == name
        assert build_attack(atk.name).describe() == atk.describe()


def test_dicts_and_overrides() -> None:
    atk = build_attack({"name": "pgd", "eps": 0.1, "steps": 10, "restarts": 20,
                        "surrogate": "tanh:5", "seed": 3}, "fmnist")
    assert isinstance(atk, PGD)
    assert (atk.eps, atk.steps, atk.restarts, atk.surrogate, atk.seed) == (0.1, 10, 20, "tanh:5", 3)
    # eps given without a step: the preset's ratio step/eps is kept (cifar10: 2/255 per 8/255)
    assert build_attack({"name": "pgd", "eps": 16 / 255}).step_size == pytest.approx(4 / 255)
    assert build_attack("pgd", "fmnist", steps=5, seed=1).steps == 5
    assert build_attack({"name": "apgd-t", "n_target_classes": 3}).n_target_classes == 3
    assert build_attack({"name": "apgd-ce", "norm": "l2"}, "fmnist").eps == 1.5
    assert build_attack({"name": "pgd_l2", "norm": "l2"}).norm is Norm.L2  # agrees with the name
    casc = build_attack({"name": "cascade", "attacks": ["apgd-ce", {"name": "square",
                                                                    "n_queries": 10}]}, "fmnist")
    assert isinstance(casc, Cascade) and [a.name for a in casc.attacks] == ["apgd-ce", "square"]
    assert casc.eps == 0.1
    strongest = build_attack({"name": "strongest", "steps": 5, "n_queries": 10}, "fmnist")
    assert strongest.eps == 0.1 and strongest.attacks[0].steps == 5
    inst = APGD(0.1)
    assert build_attack(inst) is inst


def test_temperatures_with_arguments() -> None:
    from bnnrobust.attacks.temperature import NJS, FixedTemperature, Prop1Temperature

    # Table 11: NJS with other rho values, distinct names without labels
    names = set()
    for rho in (1e-5, 0.01, 0.2):
        atk = build_attack({"name": "pgd", "temperature": {"name": "njs", "rho": rho}}, "fmnist")
        assert isinstance(atk.temperature, NJS) and atk.temperature.rho == rho
        names.add(atk.name)
    assert names == {"pgd++njs_rho1e-05", "pgd++njs", "pgd++njs_rho0.2"}
    # the suffix and a dict of the same rule: the dict's arguments win
    atk = build_attack({"name": "pgd++njs", "temperature": {"name": "njs", "rho": 0.2}})
    assert atk.temperature.rho == 0.2 and atk.name == "pgd++njs_rho0.2"
    # Table 13: Proposition 1's beta, by name or with rho; for APGD and FGSM too
    assert isinstance(build_attack("pgd++prop1").temperature, Prop1Temperature)
    apgd = build_attack({"name": "apgd-ce", "temperature": {"name": "prop1", "rho": 0.1}})
    assert apgd.name == "apgd-ce++prop1_rho0.1" and apgd.temperature.rho == 0.1
    fgsm = build_attack({"name": "fgsm", "temperature": {"name": "fixed", "beta": 5}})
    assert isinstance(fgsm.temperature, FixedTemperature) and fgsm.name == "fgsm++beta5"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("pgdd", "Unknown attack 'pgdd'.*Did you mean 'pgd'.*Known names: fgsm"),
        ("apgd-dlr++hns", "Unknown attack"),
        ("deepfool_l2", "Unknown attack"),
        ("pgd++xyz", "Unknown attack"),
        ({"name": "pgd", "stpes": 3}, "Unknown argument 'stpes'.*'steps'.*Accepted: eps"),
        ({"name": "pgd_l2", "norm": "linf"}, "fixes norm='l2'"),
        ({"name": "pgd++hns", "temperature": "njs"}, "fixes temperature='hns'"),
        ({"name": "pgd++hns", "temperature": {"name": "njs", "rho": 0.1}}, "fixes temperature"),
        ({"name": "pgd", "temperature": {"name": "njs", "roh": 0.1}}, "'roh'.*accepted: n_jsv"),
        ("square++prop1", "Unknown attack"),
        ({"eps": 0.1}, "needs a 'name' key"),
        ({"name": "cascade", "attacks": []}, "non-empty list"),
        ({"name": "cascade", "attacks": ["pgd"], "foo": 1}, "Unknown argument 'foo'"),
        ({"name": "pgd", "eps": -1.0}, "eps"),
    ],
)
def test_build_errors(spec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_attack(spec)


def test_build_type_errors() -> None:
    with pytest.raises(TypeError, match="name, a dict or an Attack"):
        build_attack(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overrides"):
        build_attack(APGD(0.1), seed=1)
    with pytest.raises(ValueError, match="No attack preset for dataset 'imagenet'.*'cifar10'"):
        build_attack("pgd", "imagenet")


# ----------------------------------------------------------------------------- presets


def test_paper_table6_values() -> None:
    c10, c100 = PRESETS["cifar10"], PRESETS["cifar100"]
    assert (c10.fgsm.eps * 255, c10.fgsm.step_size * 255, c10.fgsm.steps) == pytest.approx((8, 8, 1))
    assert (c10.pgd_linf.eps * 255, c10.pgd_linf.step_size * 255, c10.pgd_linf.steps) == \
        pytest.approx((8, 2, 20))
    assert (c10.pgd_l2.eps * 255, c10.pgd_l2.step_size * 255, c10.pgd_l2.steps) == \
        pytest.approx((120, 15, 20))
    assert (c100.fgsm.eps * 255, c100.fgsm.step_size * 255, c100.fgsm.steps) == \
        pytest.approx((4, 4, 1))
    assert (c100.pgd_linf.eps * 255, c100.pgd_linf.step_size * 255, c100.pgd_linf.steps) == \
        pytest.approx((4, 1, 10))
    assert (c100.pgd_l2.eps * 255, c100.pgd_l2.step_size * 255, c100.pgd_l2.steps) == \
        pytest.approx((60, 15, 10))
    fm = PRESETS["fmnist"]
    assert (fm.pgd_linf.eps, fm.pgd_linf.step_size, fm.pgd_linf.steps) == (0.1, 0.01, 20)
    assert (fm.pgd_l2.eps, fm.pgd_l2.step_size, fm.fgsm.eps) == (1.5, 0.15, 0.1)
    assert (ADVERSARIAL_TRAINING.eps * 255, ADVERSARIAL_TRAINING.step_size * 255,
            ADVERSARIAL_TRAINING.steps) == pytest.approx((8, 2, 7))
    at = adversarial_training_attack(seed=0)
    assert isinstance(at, PGD) and at.random_start and at.steps == 7 and at.norm is Norm.LINF


@pytest.mark.parametrize("alias,canon", [("CIFAR-10", "cifar10"), ("fashion_mnist", "fmnist"),
                                         ("FashionMNIST", "fmnist"), ("cifar_100", "cifar100"),
                                         ("MNIST", "mnist")])
def test_dataset_aliases(alias: str, canon: str) -> None:
    assert canonical_dataset(alias) == canon


def test_preset_kinds() -> None:
    paper = preset_attacks("cifar10", "paper")
    assert list(paper) == ["fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns",
                           "pgd_l2", "pgd_l2++njs", "pgd_l2++hns"]
    assert paper["pgd_l2"].eps == pytest.approx(120 / 255) and paper["pgd"].steps == 20
    quick = preset_attacks("fmnist", "quick", seed=0)
    assert list(quick) == ["pgd", "pgd++njs", "pgd++hns"]
    assert all(a.steps <= 5 and a.eps == 0.1 and a.seed == 0 for a in quick.values())
    strongest = preset_attacks("fmnist", "strongest")["strongest"]
    assert isinstance(strongest, Cascade) and strongest.name == "strongest"
    assert [a.name for a in strongest.attacks] == ["apgd-ce++hns", "apgd-ce", "apgd-dlr", "apgd-t",
                                                   "apgd-ce++hns[tanh:5]", "square"]
    assert all(a.eps == 0.1 for a in strongest.attacks)
    l2 = preset_attacks("cifar10", "strongest", norm="l2", steps=10, n_queries=100)["strongest"]
    assert l2.norm is Norm.L2 and l2.eps == pytest.approx(120 / 255)
    with pytest.raises(ValueError, match="Unknown preset kind 'best'.*'paper', 'strongest'"):
        preset_attacks("cifar10", "best")
    with pytest.raises(ValueError, match="No attack preset for dataset 'svhn'"):
        preset_attacks("svhn")


def test_built_attacks_run() -> None:
    """A few factory attacks run end to end on a tiny model (eps ball, [0, 1])."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(8, 1, 8, 8)
    y = model(x).argmax(1).detach()
    for spec in ["fgsm++njs", "pgd_l2++hns", {"name": "apgd-t", "steps": 3,
                                              "n_target_classes": 2}]:
        atk = build_attack(spec, "fmnist", seed=0) if isinstance(spec, str) else \
            build_attack(spec, "fmnist")
        xa = atk(model, x, y)
        d = (xa - x).flatten(1)
        size = d.norm(dim=1) if atk.norm is Norm.L2 else d.abs().amax(1)
        assert float(size.max()) <= atk.eps * (1 + 1e-5) + 1e-6
        assert 0 <= float(xa.min()) and float(xa.max()) <= 1
