"""Gradient-masking diagnosis: Athalye et al.'s obfuscated-gradient checklist, automated.

A robust accuracy measured with a gradient attack is only an upper bound; on binary networks
it is often a very loose one, because the gradients the attack follows are zero, saturated or
misleading (gradient masking). :func:`diagnose` runs the checks of Athalye, Carlini & Wagner
(ICML 2018, §3.1 "Identifying obfuscated & masked gradients") and the seed paper's signal
propagation analysis on a seeded subset of an evaluation set, and gives, per check, a verdict
(``pass`` / ``warning`` / ``fail``) with the numbers behind it, an overall verdict, and
recommendations (which attack to trust instead). Checks, in the order they run:

``randomness``
    Two or more forward passes in eval mode must give the same logits. A stochastic model
    (dropout left on, noise injection) needs EOT.
``zero_gradients``
    Fraction of correctly classified samples whose input gradient ``∂ℓ/∂x`` of the CE loss is
    exactly zero (or not finite), whether the zeros start at the logits (softmax saturation:
    ``∂ℓ/∂z`` underflows in the model's float dtype) or inside the network (``∂ℓ/∂z`` non-zero,
    ``∂ℓ/∂x`` zero), and which layer the gradient vanishes at (forward hooks on every leaf
    module, gradient of the loss with respect to each layer's output).
``softmax_saturation``
    Fraction of correct samples with ``p_y > 1 − ρ`` (the NJS criterion) and with an exactly
    zero loss gradient at the logits; PGD against PGD++ (HNS temperature). A PGD++ weaker
    than PGD is named in the summary.
``signal_propagation``
    Jacobian singular values (mean/std), ``‖ψ‖₂``, gradient norms and the zero-gradient
    fraction for β = 1 and for the NJS/HNS β (:func:`bnnrobust.metrics.signal.signal_propagation`).
``more_iterations``
    PGD with 10/20/100/500 steps: accuracy must not keep dropping with more steps.
``eps_growth``
    PGD at eps·1, 2, 4, 8, 16 (capped at 0.5 in L∞): accuracy must reach ~0 at a large radius.
``black_box``
    Square (score-based, no gradients) and, with ``source_model``, a transfer attack from a
    float model must not beat the white-box attacks.
``clever``
    CLEVER-style local Lipschitz scores of the logit margin: a zero gradient gives an infinite
    score, and a score above eps for a sample some attack fools means the gradient misleads.

Units: eps and every radius are in [0, 1] pixel units (inputs are images in [0, 1];
normalization belongs inside the model); accuracies are fractions in [0, 1].

Example::

    diag = diagnose(model, x, y, eps=8 / 255)
    print(diag.format())
    Path("diagnosis.json").write_text(diag.to_json())

Modules: ``checks`` (one function per check), ``driver`` (:func:`diagnose`: arguments, subset,
the checks in order), ``context`` (what the checks share), ``probe`` (layer gradients),
``verdicts`` (thresholds, recommendations), ``results`` and ``report`` (the output), ``cli``
(``evaluate.py --diagnose``), ``validation`` (argument checks). The package imports neither
Lightning nor ``bnnrobust.systems``. See ``docs/diagnosis.md``.
"""

from bnnrobust.evaluation.diagnose.cli import cli_diagnose, default_threat_model
from bnnrobust.evaluation.diagnose.driver import (
    CHECKS,
    QUICK_MAX_STEPS,
    QUICK_SQUARE_QUERIES,
    diagnose,
)
from bnnrobust.evaluation.diagnose.probe import layer_gradient_zeros
from bnnrobust.evaluation.diagnose.results import CheckResult, Diagnosis
from bnnrobust.evaluation.diagnose.verdicts import (
    REC_BLACKBOX,
    REC_CLEVER,
    REC_EOT,
    REC_EPS,
    REC_INSIDE,
    REC_ITER,
    REC_NONFINITE,
    REC_PGDPP,
    THRESHOLDS,
    Verdict,
)

__all__ = [
    "CHECKS",
    "QUICK_MAX_STEPS",
    "QUICK_SQUARE_QUERIES",
    "REC_BLACKBOX",
    "REC_CLEVER",
    "REC_EOT",
    "REC_EPS",
    "REC_INSIDE",
    "REC_ITER",
    "REC_NONFINITE",
    "REC_PGDPP",
    "THRESHOLDS",
    "CheckResult",
    "Diagnosis",
    "Verdict",
    "cli_diagnose",
    "default_threat_model",
    "diagnose",
    "layer_gradient_zeros",
]
