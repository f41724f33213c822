"""Adversarial attacks for (binary) image classifiers, with PGD++/FGSM++ temperature scaling.

All attacks take a model mapping images in [0, 1] to logits, images ``x`` (B, C, H, W) in
[0, 1] and labels ``y`` (B,), and return adversarial images in the eps ball (eps in [0, 1]
pixel units). See ``docs/attacks.md``.
"""

from bnnrobust.attacks.base import Attack, AttackOutput, Norm, eval_mode
from bnnrobust.attacks.jacobian import input_jacobian, jacobian_singular_values
from bnnrobust.attacks.losses import LOSSES, per_sample_loss
from bnnrobust.attacks.pgd import FGSM, PGD
from bnnrobust.attacks.surrogates import SURROGATES, check_surrogate_name, use_surrogate
from bnnrobust.attacks.temperature import (
    HNS,
    NJS,
    FixedTemperature,
    Prop1Temperature,
    Temperature,
    TemperatureState,
    calibrate_njs,
    hessian_norm,
    hns_temperature,
    make_temperature,
    njs_temperature,
)

__all__ = [
    "FGSM",
    "HNS",
    "LOSSES",
    "NJS",
    "PGD",
    "SURROGATES",
    "Attack",
    "AttackOutput",
    "FixedTemperature",
    "Prop1Temperature",
    "Norm",
    "Temperature",
    "TemperatureState",
    "check_surrogate_name",
    "eval_mode",
    "hessian_norm",
    "hns_temperature",
    "input_jacobian",
    "jacobian_singular_values",
    "make_temperature",
    "calibrate_njs",
    "njs_temperature",
    "per_sample_loss",
    "use_surrogate",
]

# --- exports of apgd.py, peers.py, transfer.py, cascade.py, presets.py, factory.py ---------
# (imported after the core section above, on which they depend)
from bnnrobust.attacks.apgd import APGD  # noqa: E402
from bnnrobust.attacks.cascade import Cascade, CascadeResult, StageResult  # noqa: E402
from bnnrobust.attacks.factory import build_attack, list_attacks  # noqa: E402
from bnnrobust.attacks.peers import (  # noqa: E402
    DeepFool,
    Square,
    TorchattacksAPGD,
    TorchattacksAPGDT,
    TorchattacksFAB,
)
from bnnrobust.attacks.presets import (  # noqa: E402
    PRESETS,
    adversarial_training_attack,
    get_preset,
    preset_attacks,
    strongest_cascade,
)
from bnnrobust.attacks.transfer import TransferAttack  # noqa: E402

__all__ += [
    "APGD",
    "PRESETS",
    "Cascade",
    "CascadeResult",
    "DeepFool",
    "Square",
    "StageResult",
    "TorchattacksAPGD",
    "TorchattacksAPGDT",
    "TorchattacksFAB",
    "TransferAttack",
    "adversarial_training_attack",
    "build_attack",
    "get_preset",
    "list_attacks",
    "preset_attacks",
    "strongest_cascade",
]
