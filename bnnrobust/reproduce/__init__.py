"""The paper's findings, reproduced offline on Fashion-MNIST on 2 CPU cores.

    python -m bnnrobust.reproduce --out results/fmnist            # the full run (zoo's five networks)
    python -m bnnrobust.reproduce --out /tmp/retrain --retrain    # train those five again too
    python -m bnnrobust.reproduce --out /tmp/repro --quick        # toy size, ~1-2 min (tests)
    python -m bnnrobust.reproduce --out /tmp/repro --quick --synthetic   # no dataset needed

What it does (every number comes from the project's own code paths):

1. trains seven ConvNets with ``train.py``'s code (:func:`bnnrobust.training.main`): REF
   (float), BNN-WQ (MD-tanh-S, BC, BC with a hidden FC layer) and BNN-WAQ (Hubara) from the
   converged recipes of ``configs/fmnist/`` (by default the zoo's checkpoints of those
   recipes, checked against them; ``--retrain`` trains them), and adversarially trained REF* and BNN-WQ*
   (:class:`bnnrobust.systems.AdversarialClassifier`, ``configs/reproduce/``);
2. evaluates each on the first ``n_eval`` (1,000) test images with FGSM, FGSM++ (NJS, HNS),
   PGD L∞ and L2 and their ++ variants, PGD with the DLR loss, APGD-CE, APGD-DLR, Square, the
   transfer attack from REF, PGD with 20 restarts and the ``strongest`` cascade (APGD-T too
   on BNN-WQ and BNN-WAQ, for the peer check);
3. measures signal propagation (the paper's Table 12), accuracy-vs-eps sweeps (JSON + PNG) and
   PGD++ with varying ρ for NJS (Table 11) and Proposition 1's β (Table 13);
4. checks, on BNN-WQ and BNN-WAQ, that the ``strongest`` cascade's accuracy is at most that of
   each peer attack alone (APGD-CE, APGD-DLR, APGD-T, Square) — measured, not assumed;
5. writes ``<out>/*.json``, PNGs and the Markdown report (``docs/results.md`` for the full
   run, ``<out>/results.md`` for ``--quick``/``--synthetic``) whose findings compare the
   numbers with the paper's (CIFAR-10 ResNet-18) and say where they agree or differ.

Resuming and overwriting: every stage writes a marker in ``<out>/stages/`` after it finished.
A rerun after an interruption reuses finished stages (checkpoints are also checked: the
run's ``last.ckpt`` must hold the epoch/step recorded at the end of training; a training run
killed half-way resumes from its ``last.ckpt``; an evaluation stage killed half-way resumes
at its first unfinished attack from ``<out>/eval_<model>.partial.json``). A stage whose
output was deleted is run
again, and so is every stage that depends on it. A folder holding a *complete* run, a run
made with other settings, or files that are not a reproduction is never overwritten without
``--force`` (which deletes the earlier reproduction in ``--out`` and starts from scratch).

Modules (each one job): ``common`` (errors, paths, JSON files, log), ``paper`` (the paper's
numbers, read from ``paper_numbers.json``), ``specs`` (networks, attack rows, ablations),
``settings`` (profiles), ``context`` (Stage, Context, speed calibration), ``training``,
``suite`` (the attack suite and its evaluation stages), ``measurements`` (signal, CLEVER,
sweeps, rho), ``peers`` (the peer check), ``claims`` (the findings), ``tables``, ``plots``,
``report``, ``stages`` (plan, resume, manifest, :func:`run`) and ``cli``.
"""

from __future__ import annotations

from .claims import (
    CLEAR_POINTS,
    FLOOR_POINTS,
    VERDICTS,
    Finding,
    clever_findings,
    findings,
    rho_findings,
)
from .cli import build_parser, main
from .common import DEFAULT_MARKDOWN, FORMAT_VERSION, MANIFEST, REPO_ROOT, ReproError
from .context import Context, Stage, calibrate
from .paper import PAPER, PAPER_CLEVER, PAPER_RHO, PAPER_RHO_VALUES, PAPER_SIGNAL
from .peers import peer_check
from .report import build_report
from .settings import Settings
from .specs import (
    ATTACK_ROWS,
    MODELS,
    PEERS,
    REF_KEY,
    RHO_ABLATIONS,
    SWEEP_ATTACKS,
    WAQ_KEY,
    WQ_HIDDEN_KEY,
    WQ_KEY,
    ModelSpec,
)
from .stages import plan_stages, prepare_out, run, stage_done
from .suite import attack_suite
from .training import training_config, zoo_mismatch

# the names these helpers had in the single-module bnnrobust/reproduce.py (tests use them)
_stage_done = stage_done
_prepare_out = prepare_out
_zoo_mismatch = zoo_mismatch

__all__ = [
    "ATTACK_ROWS",
    "CLEAR_POINTS",
    "DEFAULT_MARKDOWN",
    "FLOOR_POINTS",
    "FORMAT_VERSION",
    "MANIFEST",
    "MODELS",
    "PAPER",
    "PAPER_CLEVER",
    "PAPER_RHO",
    "PAPER_RHO_VALUES",
    "PAPER_SIGNAL",
    "PEERS",
    "REF_KEY",
    "REPO_ROOT",
    "RHO_ABLATIONS",
    "SWEEP_ATTACKS",
    "VERDICTS",
    "WAQ_KEY",
    "WQ_HIDDEN_KEY",
    "WQ_KEY",
    "Context",
    "Finding",
    "ModelSpec",
    "ReproError",
    "Settings",
    "Stage",
    "attack_suite",
    "build_parser",
    "build_report",
    "calibrate",
    "clever_findings",
    "findings",
    "main",
    "peer_check",
    "plan_stages",
    "prepare_out",
    "rho_findings",
    "run",
    "stage_done",
    "training_config",
    "zoo_mismatch",
]
