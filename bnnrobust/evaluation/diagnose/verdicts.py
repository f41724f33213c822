"""What the checks' verdicts are made of: the thresholds and the recommendations.

The thresholds are fractions of samples or accuracy differences in [0, 1]; docs/diagnosis.md
gives the reasons for each value.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["pass", "warning", "fail", "skipped", "error"]

#: the thresholds of the verdicts (fractions of samples or accuracy differences in [0, 1])
THRESHOLDS: dict[str, float] = {
    # randomness: relative logit change between passes (max |Δlogit| / max |logit|)
    "random_logit_rel_fail": 1e-2,
    "random_logit_rel_warn": 1e-5,
    # zero input gradients, fraction of correctly classified samples
    "zero_grad_fail": 0.10,
    "zero_grad_warn": 0.01,
    # softmax saturation: fraction of correct samples whose ∂ℓ/∂logits underflows
    "saturation_fail": 0.10,
    "saturation_warn": 0.01,
    # more iterations: accuracy drop from the fewest to the most steps
    "iter_drop_fail": 0.10,
    "iter_drop_warn": 0.03,
    # more iterations: accuracy drop between the two largest step counts (still falling)
    "iter_last_drop_warn": 0.02,
    # eps growth: accuracy at the largest radius
    "eps_acc_fail": 0.10,
    "eps_acc_warn": 0.02,
    # eps growth: the radius counts as "large" from this per-pixel size (L2: times sqrt(N))
    "eps_large_linf": 0.25,
    "eps_large_l2_per_sqrt_n": 0.10,
    # a black-box / PGD++ attack beats the white-box one by more than this (and the noise)
    "beats_margin": 0.02,
    # CLEVER: fraction of correct samples with an infinite score (zero margin gradient)
    "clever_inf_fail": 0.10,
    "clever_inf_warn": 0.01,
    # CLEVER: fraction of correct samples with score > eps that an attack fools anyway
    "clever_over_warn": 0.10,
}

#: severity of a verdict: the overall verdict is the worst one (error counts as a warning)
RANK: dict[str, int] = {"pass": 0, "skipped": 0, "warning": 1, "error": 1, "fail": 2}

REC_PGDPP = ("softmax saturation: use PGD++ with HNS (PGD(temperature='hns')) or NJS "
             "(temperature='njs'); the temperature restores the gradient at the logits.")
REC_INSIDE = ("zero gradients inside the network, not at the logits: temperature cannot help; use "
              "a black-box attack (Square) or a surrogate-gradient attack (PGD(surrogate='tanh:5')).")
REC_EOT = ("randomness: the model is stochastic in eval mode; use EOT (average the gradient over "
           "several forward passes) and report the accuracy over several evaluations, or fix the "
           "randomness (dropout left on?).")
REC_NONFINITE = ("NaN/inf input gradients: the attack steps are undefined for these samples; find "
                 "the non-finite operation (e.g. log of 0, division by 0) before trusting PGD.")
REC_ITER = ("accuracy keeps dropping with more steps: the attack has not converged; report the "
            "accuracy at the largest step count, or use APGD (step-size schedule) with restarts.")
REC_EPS = ("accuracy does not reach ~0 at a large radius: the gradient attack is blocked (gradient "
           "masking) or eps is in the wrong units (eps is in [0, 1] pixels, normalization inside "
           "the model); cross-check with Square, a surrogate gradient or PGD++.")
REC_BLACKBOX = ("a black-box attack beats the white-box one: white-box gradients are masked; report "
                "the per-sample worst case over white-box and black-box attacks "
                "(bnnrobust.attacks.Cascade).")
REC_CLEVER = ("CLEVER-style scores are infinite or above eps where attacks succeed: the local "
              "gradient misleads; do not certify from gradients, trust black-box results.")
