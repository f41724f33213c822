"""What the reproduction trains and attacks: the seven networks, the attack rows of the
tables, the peer attacks, the swept attacks and the rho ablations."""

from __future__ import annotations

from dataclasses import dataclass

from .paper import PAPER_RHO_VALUES


@dataclass(frozen=True)
class ModelSpec:
    """One trained network of the reproduction.

    Attributes:
        key: short name, used in file names (``eval_<key>.json``) and run folders.
        label: the paper's name for it (table column).
        config: training YAML, relative to the repository root (the converged recipes of
            ``configs/fmnist/``, the adversarial trainings of ``configs/reproduce/``).
        family: ``"ref"`` (float), ``"wq"`` (binary weights) or ``"waq"`` (binary weights
            and activations).
        adversarial: trained with PGD adversarial training.
        zoo: the model-zoo entry trained by ``train.py`` from the same recipe, reused instead
            of training by default (``--retrain`` trains it; its checksum, architecture and epoch are checked).
    """

    key: str
    label: str
    config: str
    family: str
    adversarial: bool = False
    zoo: str | None = None


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("ref", "REF", "configs/fmnist/convnet_ref.yaml", "ref", zoo="fmnist_ref"),
    ModelSpec("wq_md_tanh_s", "BNN-WQ (MD-tanh-S)", "configs/fmnist/convnet_md_tanh_s.yaml", "wq",
              zoo="fmnist_bnn_wq_md_tanh_s"),
    ModelSpec("wq_bc", "BNN-WQ (BC)", "configs/fmnist/convnet_bc.yaml", "wq",
              zoo="fmnist_bnn_wq_bc"),
    ModelSpec("wq_bc_hidden", "BNN-WQ (BC, hidden FC)", "configs/fmnist/convnet_bc_hidden.yaml",
              "wq", zoo="fmnist_bnn_wq_bc_hidden"),
    ModelSpec("waq_hubara", "BNN-WAQ (Hubara)", "configs/fmnist/convnet_hubara.yaml", "waq",
              zoo="fmnist_bnn_waq_hubara"),
    ModelSpec("adv_ref", "REF* (adv.)", "configs/reproduce/adv_ref.yaml", "ref", adversarial=True),
    ModelSpec("adv_wq_md_tanh_s", "BNN-WQ* (adv., MD-tanh-S)",
              "configs/reproduce/adv_wq_md_tanh_s.yaml", "wq", adversarial=True),
)
#: ``{key: spec}`` of :data:`MODELS`
BY_KEY = {m.key: m for m in MODELS}
REF_KEY = "ref"
WQ_KEY = "wq_md_tanh_s"
WAQ_KEY = "waq_hubara"
WQ_HIDDEN_KEY = "wq_bc_hidden"

#: (key in the eval JSON, row label) in table order; ``{S}``, ``{Q}``, ``{R}`` are filled in
ATTACK_ROWS: tuple[tuple[str, str], ...] = (
    ("fgsm", "FGSM"),
    ("fgsm++njs", "FGSM++ (NJS)"),
    ("fgsm++hns", "FGSM++ (HNS)"),
    ("pgd", "PGD L∞"),
    ("pgd++njs", "PGD++ L∞ (NJS)"),
    ("pgd++hns", "PGD++ L∞ (HNS)"),
    ("pgd_l2", "PGD L2"),
    ("pgd_l2++njs", "PGD++ L2 (NJS)"),
    ("pgd_l2++hns", "PGD++ L2 (HNS)"),
    ("pgd_dlr", "PGD L∞, DLR loss"),
    ("apgd-ce", "APGD-CE ({S} steps)"),
    ("apgd-dlr", "APGD-DLR ({S} steps)"),
    ("apgd-t", "APGD-T ({S} steps × 9 targets)"),
    ("square", "Square ({Q} queries)"),
    ("transfer_pgd", "transfer PGD L∞ from REF (black-box)"),
    ("pgd_restarts", "PGD L∞, {R} restarts"),
    ("strongest", "strongest cascade"),
)
#: the attacks built by name with the dataset's preset (:func:`bnnrobust.attacks.factory.build_attack`)
NAMED_ATTACKS = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns", "pgd_l2",
                 "pgd_l2++njs", "pgd_l2++hns", "pgd_dlr")
PEERS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
SWEEP_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "pgd++njs", "pgd++hns")

#: (temperature, rho values, networks) of the paper's two rho ablations; the rho values are
#: the paper's (``paper_numbers.json``)
RHO_ABLATIONS: dict[str, tuple[tuple[float, ...], tuple[str, ...]]] = {
    "njs": (PAPER_RHO_VALUES["njs"], (REF_KEY, WQ_KEY, WAQ_KEY)),                   # Table 11
    "prop1": (PAPER_RHO_VALUES["prop1"], (REF_KEY, WQ_KEY, "adv_ref", "adv_wq_md_tanh_s")),  # 13
}
