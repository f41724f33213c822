"""Attack presets per dataset: the paper's Table 6, a Fashion-MNIST/MNIST preset, the
adversarial-training attack (Table 4), and the ``"strongest"`` worst-case cascade.

All eps and step sizes are in [0, 1] pixel units (the paper gives them in /255)::

    | dataset | FGSM eps / step / T | PGD L∞ eps / step / T | PGD L2 eps / step / T | source |
    |---|---|---|---|---|
    | cifar10 | 8/255 / 8/255 / 1 | 8/255 / 2/255 / 20 | 120/255 / 15/255 / 20 | paper Table 6 |
    | cifar100 | 4/255 / 4/255 / 1 | 4/255 / 1/255 / 10 | 60/255 / 15/255 / 10 | paper Table 6 |
    | fmnist, mnist | 0.1 / 0.1 / 1 | 0.1 / 0.01 / 20 | 1.5 / 0.15 / 20 | bnnrobust |
    | synthetic | as fmnist | | | for tests |

The Fashion-MNIST/MNIST values are ours (the paper has no such table): eps 0.1 L∞ is the
budget of bnnrobust's Fashion-MNIST BNN measurements; PGD takes 20 steps of
eps/10 (twice the radius in total travel), and L2 uses eps 1.5 (the usual MNIST L2 radii
are 1.5–2) with steps of eps/10. MNIST papers often use eps 0.3; pass ``eps=0.3`` to override.

Adversarial training (paper Table 4, every dataset): PGD L∞, eps 8/255, step 2/255,
T = 7, random start — :data:`ADVERSARIAL_TRAINING` and :func:`adversarial_training_attack`.

``preset_attacks(dataset, which)`` builds named attacks (each attack of
:data:`PRESET_ATTACKS` with the temperatures the registry lists for it, ``"++njs"`` and
``"++hns"``):

* ``"paper"`` — FGSM, FGSM++NJS, FGSM++HNS, PGD L∞ (+ ++NJS, ++HNS), PGD L2 (+ ++NJS,
  ++HNS) with the table's budgets (the paper's evaluation);
* ``"quick"`` — PGD, PGD++NJS, PGD++HNS with 5 steps (per-epoch robustness monitor);
* ``"strongest"`` — one :class:`~bnnrobust.attacks.cascade.Cascade` named ``"strongest"``
  (see :func:`strongest_cascade`), the number to report as robust accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from bnnrobust.attacks.apgd import APGD
from bnnrobust.attacks.base import Attack, AttackOutput, Norm
from bnnrobust.attacks.cascade import Cascade
from bnnrobust.attacks.peers import Square
from bnnrobust.attacks.pgd import PGD
from bnnrobust.attacks.registry import find_attack, register_attack

__all__ = [
    "ADVERSARIAL_TRAINING",
    "PRESETS",
    "PRESET_ATTACKS",
    "PRESET_KINDS",
    "AttackBudget",
    "DatasetPreset",
    "OnlyWithSignActivations",
    "adversarial_training_attack",
    "canonical_dataset",
    "get_preset",
    "list_datasets",
    "preset_attacks",
    "strongest_cascade",
]


@dataclass(frozen=True)
class AttackBudget:
    """Radius, step size (both in [0, 1] pixel units) and number of steps of one attack."""

    eps: float
    step_size: float
    steps: int


@dataclass(frozen=True)
class DatasetPreset:
    """The attack budgets of one dataset (see the module table)."""

    dataset: str
    fgsm: AttackBudget
    pgd_linf: AttackBudget
    pgd_l2: AttackBudget
    source: str

    def budget(self, norm: str | Norm = "linf") -> AttackBudget:
        """The PGD budget of a threat model (``"linf"`` or ``"l2"``)."""
        return self.pgd_linf if Norm.parse(norm) is Norm.LINF else self.pgd_l2


def _px(v: float) -> float:
    return v / 255.0


_FMNIST = dict(
    fgsm=AttackBudget(0.1, 0.1, 1),
    pgd_linf=AttackBudget(0.1, 0.01, 20),
    pgd_l2=AttackBudget(1.5, 0.15, 20),
)

#: presets by canonical dataset name
PRESETS: dict[str, DatasetPreset] = {
    "cifar10": DatasetPreset(
        "cifar10",
        fgsm=AttackBudget(_px(8), _px(8), 1),
        pgd_linf=AttackBudget(_px(8), _px(2), 20),
        pgd_l2=AttackBudget(_px(120), _px(15), 20),
        source="paper Table 6",
    ),
    "cifar100": DatasetPreset(
        "cifar100",
        fgsm=AttackBudget(_px(4), _px(4), 1),
        pgd_linf=AttackBudget(_px(4), _px(1), 10),
        pgd_l2=AttackBudget(_px(60), _px(15), 10),
        source="paper Table 6",
    ),
    "fmnist": DatasetPreset("fmnist", source="bnnrobust (eps 0.1 L∞)", **_FMNIST),
    "mnist": DatasetPreset("mnist", source="bnnrobust (as fmnist; literature often uses 0.3)",
                           **_FMNIST),
    "synthetic": DatasetPreset("synthetic", source="tests (as fmnist)", **_FMNIST),
}

#: adversarial training attack of the paper (Table 4): PGD L∞, eps 8/255, step 2/255, T = 7
ADVERSARIAL_TRAINING = AttackBudget(_px(8), _px(2), 7)

#: accepted values of ``which`` in :func:`preset_attacks`
PRESET_KINDS: tuple[str, ...] = ("paper", "strongest", "quick")
#: the registered attacks of the ``"paper"`` and ``"quick"`` presets (each with its listed
#: temperature variants, see :meth:`~bnnrobust.attacks.registry.AttackEntry.listed_names`)
PRESET_ATTACKS: dict[str, tuple[str, ...]] = {"paper": ("fgsm", "pgd", "pgd_l2"),
                                              "quick": ("pgd",)}

_ALIASES = {"fashionmnist": "fmnist", "fashion": "fmnist", "cifar": "cifar10"}


def list_datasets() -> list[str]:
    """Canonical dataset names that have a preset."""
    return list(PRESETS)


def canonical_dataset(dataset: str) -> str:
    """``"CIFAR-10"`` → ``"cifar10"``, ``"FashionMNIST"`` → ``"fmnist"``; error if unknown."""
    key = str(dataset).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"No attack preset for dataset {dataset!r}; accepted: "
                         f"{', '.join(repr(k) for k in PRESETS)} (case, '-' and '_' ignored; "
                         "'fashion_mnist' means 'fmnist').")
    return key


def get_preset(dataset: str) -> DatasetPreset:
    """The :class:`DatasetPreset` of ``dataset`` (see :func:`canonical_dataset`)."""
    return PRESETS[canonical_dataset(dataset)]


def adversarial_training_attack(seed: int | None = None) -> PGD:
    """PGD L∞ eps 8/255, step 2/255, 7 steps, random start (paper Table 4)."""
    b = ADVERSARIAL_TRAINING
    return PGD(eps=b.eps, step_size=b.step_size, steps=b.steps, norm="linf", random_start=True,
               seed=seed)


class OnlyWithSignActivations(Attack):
    """Run ``attack`` only on models with sign activations; elsewhere return ``x`` unchanged.

    Used for the surrogate-gradient stage of the strongest cascade: an attack-time
    surrogate (``surrogate="tanh:5"``) only changes the backward of sign activations, so on
    a model without them the stage would repeat an earlier one (and warn).
    """

    def __init__(self, attack: Attack) -> None:
        super().__init__(surrogate=None, seed=None)
        self.attack = attack
        self.eps = getattr(attack, "eps", None)
        self.norm = getattr(attack, "norm", None)
        self.name = f"{attack.name}[{attack.surrogate}]" if attack.surrogate else attack.name

    def describe(self) -> dict[str, object]:
        # a wrapper: the inner attack's description, marked as conditional
        return {"name": self.name, "only_with_sign_activations": True,
                "attack": self.attack.describe()}

    def _perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: object) -> AttackOutput:
        from bnnrobust.attacks.surrogates import sign_modules

        if not sign_modules(model):
            return AttackOutput(x.clone())
        out = self.attack.perturb(model, x, y)
        return AttackOutput(out.x_adv, dict(out.info))


@register_attack(
    "strongest", l2_variant=True, surrogate=True, budget="dataset",
    description="the worst-case cascade: APGD-CE++HNS, APGD-CE, APGD-DLR, APGD-T, "
                "APGD-CE++HNS[tanh:5] (sign activations only), Square")
def strongest_cascade(
    dataset: str | None = None,
    *,
    eps: float | None = None,
    norm: str | Norm = "linf",
    steps: int = 100,
    n_queries: int = 5000,
    surrogate: str | None = "tanh:5",
    seed: int | None = 0,
) -> Cascade:
    """The worst-case cascade reported as a model's robust accuracy.

    Stages, each on the samples still robust, each from the clean input:

    1. ``apgd-ce++hns`` — APGD-CE on HNS-scaled logits (restores the vanishing softmax
       error signal of BNNs; the paper's fix inside the stronger optimizer);
    2. ``apgd-ce`` — plain APGD-CE (β = 1), so the cascade is never weaker than the
       untempered attack where HNS picks a poor β;
    3. ``apgd-dlr`` — scale-invariant margin loss, immune to softmax saturation;
    4. ``apgd-t`` — targeted DLR over the top 9 other classes;
    5. ``apgd-ce++hns[tanh:5]`` — only on models with sign activations (BNN-WAQ, where
       the vanishing gradient sits inside the network): APGD-CE++HNS with the attack-time
       surrogate backward ``tanh:5`` (see :mod:`bnnrobust.attacks.surrogates`);
    6. ``square`` — gradient-free (score-based) with ``n_queries`` queries: catches any
       remaining gradient masking.

    It contains AutoAttack-standard's APGD-CE, APGD-T and Square (ours or the same
    algorithm), so per sample it is at least as strong as each of them; FAB-T, the fourth
    member of AutoAttack, almost never adds a success after APGD-T and is left out
    (add ``TorchattacksFAB`` to a :class:`Cascade` to check).

    Args:
        dataset: preset giving eps (``None``: cifar10). eps: override of the radius.
        norm: ``"linf"`` or ``"l2"``. steps: APGD steps per stage. n_queries: Square's budget.
        surrogate: the surrogate of stage 5 (``None`` drops the stage). seed: attacks' seed.
    """
    norm = Norm.parse(norm)
    e = get_preset(dataset or "cifar10").budget(norm).eps if eps is None else float(eps)
    attacks: list[Attack] = [
        APGD(e, norm=norm, steps=steps, loss="ce", temperature="hns", seed=seed),
        APGD(e, norm=norm, steps=steps, loss="ce", seed=seed),
        APGD(e, norm=norm, steps=steps, loss="dlr", seed=seed),
        APGD(e, norm=norm, steps=steps, loss="dlr_targeted", n_target_classes=9, seed=seed),
    ]
    if surrogate is not None:
        attacks.append(OnlyWithSignActivations(
            APGD(e, norm=norm, steps=steps, loss="ce", temperature="hns", surrogate=surrogate,
                 seed=seed)))
    attacks.append(Square(e, norm=norm, n_queries=n_queries, seed=seed))
    return Cascade(attacks, name="strongest")


def preset_attacks(
    dataset: str,
    which: str = "paper",
    *,
    seed: int | None = None,
    norm: str | Norm = "linf",
    steps: int = 100,
    n_queries: int = 5000,
) -> dict[str, Attack]:
    """Named attacks of a preset, keyed by attack name.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"``, ``"fmnist"``, ``"mnist"`` or ``"synthetic"``.
        which: ``"paper"``, ``"strongest"`` or ``"quick"`` (see the module docstring).
        seed: seed of every attack's random start (``None``: torch's global generator;
            the strongest cascade then uses seed 0).
        norm, steps, n_queries: threat model and budgets of ``"strongest"`` only.
    """
    p = get_preset(dataset)
    kind = str(which).strip().lower()
    if kind not in PRESET_KINDS:
        raise ValueError(f"Unknown preset kind {which!r}; accepted: "
                         f"{', '.join(repr(k) for k in PRESET_KINDS)}.")
    if kind == "strongest":
        casc = strongest_cascade(p.dataset, norm=norm, steps=steps, n_queries=n_queries,
                                 seed=0 if seed is None else seed)
        return {casc.name: casc}
    from bnnrobust.attacks.factory import build_attack  # the factory imports this module

    overrides: dict[str, object] = {"seed": seed}  # "paper": the preset's budgets as they are
    if kind == "quick":
        b = p.pgd_linf
        steps_q = min(5, b.steps)
        overrides.update(steps=steps_q, step_size=max(b.step_size, 2.5 * b.eps / steps_q))
    attacks: list[Attack] = []
    for base in PRESET_ATTACKS[kind]:
        entry = find_attack(base)
        if entry is None:  # pragma: no cover - the attack modules register these names
            raise RuntimeError(f"preset {kind!r}: attack {base!r} is not registered.")
        attacks.extend(build_attack(n, p.dataset, **overrides) for n in entry.listed_names())
    return {a.name: a for a in attacks}
