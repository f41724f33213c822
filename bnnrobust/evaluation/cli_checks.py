"""Checks of an evaluation request, all before anything is loaded or attacked: the parsed
values (:func:`check_values`), the whole request once the attacks are known
(:func:`check_request`) and the output folders (:func:`check_outputs`).

Each refusal is an :class:`~bnnrobust.evaluation.cli_parser.EvalError`: one paragraph naming
the flag, exit code 2 (:func:`bnnrobust.evaluation.cli.main`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnrobust.evaluation.cli_parser import EvalError, coerce_list
from bnnrobust.validation import unwritable_reason

__all__ = ["check_outputs", "check_request", "check_values"]

#: flags that only apply to --ckpt / only to --model (refused with the other)
_CKPT_ONLY = ("train_config", "allow_module")
_MODEL_ONLY = ("model_args", "weights", "binarizer", "normalize")


def check_values(cfg: Any) -> None:
    """Validate and normalize the parsed values (config files included) before any loading:
    list flags, ``--ckpt`` xor ``--model`` and the flags of each, ``--n``, ``--batch_size``."""
    cfg.attacks = coerce_list("attacks", cfg.attacks, "--attacks")
    cfg.sweep_attacks = coerce_list("attack_list", cfg.sweep_attacks, "--sweep_attacks")
    cfg.sweep_eps = coerce_list("floats", cfg.sweep_eps, "--sweep_eps")
    cfg.allow_module = coerce_list("strings", cfg.allow_module, "--allow_module") or []
    if cfg.ckpt and cfg.model:
        raise EvalError(f"--ckpt {cfg.ckpt!r} and --model {cfg.model!r} both name the network; "
                        "give one: --ckpt for a checkpoint written by train.py (or zoo:NAME), "
                        "--model with --weights for any other network.")
    if not cfg.ckpt and not cfg.model:
        raise EvalError("No network given; pass --ckpt PATH (a .ckpt written by train.py, or "
                        "zoo:NAME) or --model MODULE:CLASS | timm:NAME | torchvision:NAME with "
                        "--weights PATH (docs/evaluation.md, 'Any model').")
    wrong = [k for k in (_CKPT_ONLY if cfg.model else _MODEL_ONLY) if cfg.get(k)]
    if wrong:
        other = "--ckpt" if cfg.model else "--model"
        raise EvalError(f"{', '.join('--' + k for k in wrong)} only apply with {other}; drop "
                        f"{'them' if len(wrong) > 1 else 'it'} or use {other}.")
    if cfg.model_args is not None and not isinstance(cfg.model_args, dict):
        raise EvalError(f"--model_args must be a mapping such as '{{num_classes: 10}}', got "
                        f"{cfg.model_args!r}.")
    if cfg.n is not None and cfg.n < 1:
        raise EvalError(f"--n must be a positive integer or null (all samples), got {cfg.n!r}.")
    if cfg.batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {cfg.batch_size!r}.")


def check_outputs(out_json: Path, save_adv: str | None) -> None:
    """Refuse, before any attack, an output that cannot be written (one paragraph each)."""
    targets = [(out_json.parent, "--output (its folder)")]
    if save_adv:
        targets.append((Path(save_adv), "--save_adv"))
    for folder, flag in targets:
        if folder.exists() and not folder.is_dir():
            raise EvalError(f"{flag}: {str(folder)!r} exists and is not a folder; give another "
                            "path.")
        reason = unwritable_reason(folder)
        if reason is not None:
            raise EvalError(f"{flag}: cannot write to {str(folder)!r} ({reason}); "
                            "give a writable folder (--output PATH.json, --save_adv DIR).")
    for path in (out_json, out_json.with_suffix(".md")):
        if path.is_dir():
            raise EvalError(f"--output: {str(path)!r} is a folder; give a file name such as "
                            f"{str(path / 'results.json')!r}.")


def check_request(cfg: Any, attacks: dict[str, Any], dataset: str | None,
                  sweep_attacks: list[Any], eps_list: list[float]) -> None:
    """Validate the whole request (sweep, diagnosis, signal options) before the first attack."""
    from bnnrobust.attacks.factory import build_attack

    if cfg.signal_propagation and cfg.signal_n < 1:
        raise EvalError(f"--signal_n must be >= 1, got {cfg.signal_n!r}.")
    if cfg.diagnose:
        if cfg.diagnose_n < 1:
            raise EvalError(f"--diagnose_n must be >= 1, got {cfg.diagnose_n!r}.")
        if cfg.diagnose_eps is not None and not 0 < cfg.diagnose_eps <= 1:
            raise EvalError(f"--diagnose_eps must lie in (0, 1] (pixel units, e.g. 8/255 = "
                            f"0.0314), got {cfg.diagnose_eps!r}.")
    if not cfg.sweep:
        return
    if not eps_list:
        raise EvalError("--sweep_eps is empty; give eps values in [0, 1] pixel units.")
    for e in eps_list:
        if not 0 <= e <= 1:
            raise EvalError(f"--sweep_eps: {e!r} is outside [0, 1] (pixel units; eps 8 in 0-255 "
                            f"units is {8 / 255:.4f}).")
    for spec in sweep_attacks:
        try:
            built = build_attack(spec, dataset=dataset)
        except (ValueError, TypeError) as err:
            raise EvalError(f"--sweep_attacks: bad attack {spec!r}: {err}") from None
        if "eps" not in built.describe():
            raise EvalError(f"--sweep_attacks: {built.name!r} has no eps budget; a sweep needs "
                            "attacks with an eps (fgsm, pgd, apgd-ce, square, ...).")
