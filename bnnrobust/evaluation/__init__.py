"""Evaluation of trained models: checkpoint loading, attack runner, reports, eps sweeps.

``python evaluate.py --config configs/eval/X.yaml --ckpt PATH`` drives it (``cli.py``);
the pieces are usable from Python::

    system, dm = load_system("logs/run/checkpoints/last.ckpt")
    result = evaluate(system.model, (x, y), {"pgd++njs": build_attack("pgd++njs")}, seed=0)
    write_reports(result, "results.json")

or in one call, with an AutoAttack-style log (``api.py``)::

    result = evaluate_robustness(model, (x, y), attacks="strongest", dataset="cifar10")

Accuracies are in percent, eps in [0, 1] pixel units. See ``docs/evaluation.md``.
"""

from bnnrobust.evaluation.api import RobustnessResult, evaluate_robustness
from bnnrobust.evaluation.checkpoint import CheckpointError, load_checkpoint_dict, load_system
from bnnrobust.evaluation.report import format_table, markdown_table, versions, write_reports
from bnnrobust.evaluation.runner import (
    AttackResult,
    BetaStats,
    EvalResult,
    adv_path,
    evaluate,
    reevaluate,
)
from bnnrobust.evaluation.sweep import eps_sweep, plot_sweep

__all__ = [
    "AttackResult",
    "BetaStats",
    "CheckpointError",
    "EvalResult",
    "RobustnessResult",
    "adv_path",
    "eps_sweep",
    "evaluate",
    "evaluate_robustness",
    "format_table",
    "load_checkpoint_dict",
    "load_system",
    "markdown_table",
    "plot_sweep",
    "reevaluate",
    "versions",
    "write_reports",
]
