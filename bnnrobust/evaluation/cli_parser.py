"""The command line of ``evaluate.py`` / ``bnnrobust evaluate`` / ``bnnrobust diagnose``:
:func:`build_parser` (jsonargparse) and its list flags (:func:`coerce_list`).

The flags and the YAML keys are described in :mod:`bnnrobust.evaluation.cli`, which runs
the command and re-exports these names.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["COMMANDS", "EvalError", "build_parser", "coerce_list"]

COMMANDS = ("evaluate", "diagnose")


class EvalError(ValueError):
    """A user error of the evaluation command (printed as one paragraph, exit code 2)."""


def _flags(name: str) -> tuple[str, ...]:
    """``--name`` and, for a name with ``_``, its dashed spelling (``--batch_size``, ``--batch-size``)."""
    dashed = name.replace("_", "-")
    return (f"--{name}", f"--{dashed}") if dashed != name else (f"--{name}",)


def _yaml_token(token: str, flag: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(token)
    except yaml.YAMLError as err:
        raise EvalError(f"{flag}: {token!r} is not valid YAML ({' '.join(str(err).split())}); "
                        "quote attack dicts as '{name: pgd, eps: 0.05}'.") from None


def coerce_list(kind: str, value: Any, flag: str) -> Any:
    """A list flag's value, from the command line (several values or one YAML value) or a config.

    ``kind``: ``"attacks"`` (a preset name stays a string; one dict becomes a list),
    ``"attack_list"`` (always a list or None), ``"strings"`` (a list of names) or ``"floats"``
    (numbers → list of floats).
    Raises :class:`EvalError` naming the bad value and what is accepted.
    """
    if value is None:
        return None
    if kind == "floats":
        items = value if isinstance(value, list | tuple) else [value]
        out = []
        for item in items:
            try:
                if isinstance(item, bool):
                    raise ValueError
                out.append(float(item))
            except (TypeError, ValueError):
                raise EvalError(f"{flag}: {item!r} is not a number; give eps values in [0, 1] "
                                f"pixel units, e.g. {flag} 0 0.05 0.1 (8/255 is "
                                f"{8 / 255:.4f}).") from None
        return out
    if kind == "attacks" and isinstance(value, str):
        return value
    items = list(value) if isinstance(value, list | tuple) else [value]
    if kind == "strings":
        bad = [item for item in items if not isinstance(item, str) or not item.strip()]
        if bad:
            raise EvalError(f"{flag}: {bad[0]!r} is not a module name; give names such as "
                            f"{flag} mypkg otherpkg.")
        return items
    for item in items:
        if not isinstance(item, str | dict):
            raise EvalError(f"{flag}: {item!r} is not an attack; give attack names or dicts, "
                            "e.g. pgd '{name: pgd, eps: 0.05, steps: 50}'"
                            + (", or a preset (paper, strongest, quick)." if kind == "attacks"
                               else "."))
    return items


class _ListAction(argparse.Action):
    """A list flag: ``--flag a b c`` (several values) or ``--flag '[a, b]'`` (one YAML value);
    each value is read as YAML (``'{name: pgd, eps: 0.05}'`` is a dict)."""

    def __init__(self, option_strings: Sequence[str], dest: str, kind: str = "attack_list",
                 **kwargs: Any) -> None:
        kwargs["nargs"] = "+"
        super().__init__(option_strings, dest, **kwargs)
        self.kind = kind

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any,
                 option_string: str | None = None) -> None:
        tokens = list(values) if isinstance(values, list) else [values]
        flag = option_string or self.dest
        try:
            loaded = [_yaml_token(str(t), flag) for t in tokens]
            if len(loaded) > 1 and any(isinstance(v, list) for v in loaded):
                raise EvalError(f"{flag}: give either several values or one YAML list, not "
                                f"both ({' '.join(map(str, tokens))!r}).")
            value = coerce_list(self.kind, loaded[0] if len(loaded) == 1 else loaded, flag)
        except EvalError as err:
            raise argparse.ArgumentError(self, str(err).removeprefix(f"{flag}: ")) from None
        setattr(namespace, self.dest, value)


def build_parser(prog: str = "evaluate.py", *, command: str = "evaluate") -> Any:
    """The jsonargparse parser of ``evaluate.py`` (``command="diagnose"``: of ``bnnrobust diagnose``)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}.")
    description = (
        "Evaluate a trained checkpoint or any model: clean accuracy and adversarial accuracy "
        "per attack (eps in [0, 1] pixel units, accuracies in percent), written as JSON and "
        "Markdown. See docs/evaluation.md.") if command == "evaluate" else (
        "Gradient-masking checklist (docs/diagnosis.md) of a checkpoint or any model: clean "
        "accuracy and the diagnosis, written to <output>_diagnosis.json; no attack table "
        "unless --attacks is given. Options as `bnnrobust evaluate`.")
    p = ArgumentParser(prog=prog, description=description, default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="Evaluation YAML (configs/eval/*.yaml).")
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="Checkpoint written by train.py, or zoo:NAME (bnnrobust.zoo).")
    p.add_argument(*_flags("allow_module"), action=_ListAction, kind="strings", default=[],
                   metavar="MODULE",
                   help="Modules (besides bnnrobust, torch, torchvision, timm) whose classes the "
                        "checkpoint may name; checked before anything is imported.")
    p.add_argument(*_flags("train_config"), type=str | None, default=None,
                   help="Training YAML to rebuild the model (else the checkpoint's hyperparameters).")
    # -- any model (bnnrobust/evaluation/any_model.py; docs/evaluation.md, 'Any model') --
    p.add_argument("--model", type=str | None, default=None,
                   help="Instead of --ckpt: MODULE:CLASS (keyword arguments: --model_args), "
                        "timm:NAME or torchvision:NAME (built without downloading weights).")
    p.add_argument(*_flags("model_args"), type=dict[str, Any] | None, default=None,
                   help="Keyword arguments of --model, e.g. '{num_classes: 10}'.")
    p.add_argument("--weights", type=str | None, default=None,
                   help="Weights of --model: a state_dict file, a Lightning checkpoint (its "
                        "state_dict) or zoo:NAME; read with weights_only=True.")
    p.add_argument("--binarizer", type=str | None, default=None,
                   help="Binarize --model with bnnrobust.binarize (none, bc, gd_tanh, "
                        "md_tanh_s, hubara) before its weights are loaded.")
    p.add_argument("--normalize", type=dict[str, Any] | None, default=None,
                   help="'{mean: [...], std: [...]}': a Normalize in front of --model (default: "
                        "none, the model sees [0, 1] pixels).")
    p.add_argument(*_flags("run_name"), type=str | None, default=None,
                   help="Name of the model in titles and of the default output folder "
                        "(default: the checkpoint's run, or the --model spec).")
    p.add_argument("--attacks", "--preset", action=_ListAction, kind="attacks",
                   default=[] if command == "diagnose" else "paper", metavar="ATTACK",
                   help="Preset name (paper | strongest | quick) or attack names/dicts, as "
                        "several values or one YAML list; --preset X is --attacks X.")
    p.add_argument("--n", type=int | None, default=1000, help="Evaluate the first n samples (null: all).")
    p.add_argument(*_flags("batch_size"), type=int, default=256, help="Samples per attack batch.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the attacks' random starts.")
    p.add_argument("--split", type=Literal["test", "val"], default="test", help="Data split.")
    p.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N.")
    p.add_argument("--dataset", type=str | None, default=None,
                   help="Dataset whose presets to use (default: the checkpoint's data module); "
                        "with --model also the data: cifar10, cifar100, fmnist, mnist, synthetic.")
    p.add_argument("--data", type=dict[str, Any] | None, default=None,
                   help="Data module init overrides, e.g. '{data_dir: /data}'.")
    p.add_argument("--output", type=str | None, default=None,
                   help="Results JSON path (default <run>/eval/results.json); Markdown next to it.")
    p.add_argument(*_flags("save_adv"), type=str | None, default=None,
                   help="Folder for adversarial examples, one <attack>.pt per attack.")
    p.add_argument("--sweep", action=ActionYesNo, nargs="?", default=False,
                   help="Also run an accuracy-vs-eps sweep.")
    p.add_argument(*_flags("sweep_eps"), action=_ListAction, kind="floats", default=None,
                   metavar="EPS",
                   help="eps values of the sweep (pixel units); default: 0..2x the preset's PGD eps.")
    p.add_argument(*_flags("sweep_attacks"), action=_ListAction, kind="attack_list", default=None,
                   metavar="ATTACK",
                   help="Attacks of the sweep (default: fgsm, pgd, pgd++njs, pgd++hns).")
    p.add_argument(*_flags("signal_propagation"), action=ActionYesNo, nargs="?", default=False,
                   help="Print and save the paper's Table 12 signal-propagation rows.")
    p.add_argument(*_flags("signal_n"), type=int, default=500, help="Samples for --signal_propagation.")
    p.add_argument("--progress", action=ActionYesNo, nargs="?", default=True,
                   help="Show progress bars.")
    # -- gradient-masking diagnosis (bnnrobust/evaluation/diagnose/, docs/diagnosis.md) --
    p.add_argument("--diagnose", action=ActionYesNo, nargs="?", default=command == "diagnose",
                   help="Run the gradient-masking checklist and save <results>_diagnosis.json.")
    p.add_argument(*_flags("diagnose_n"), type=int, default=200, help="Seeded subset size of --diagnose.")
    p.add_argument(*_flags("diagnose_eps"), type=float | None, default=None,
                   help="eps of --diagnose (pixel units; default: the largest L∞ eps of the "
                        "attacks, else of the dataset's quick preset).")
    p.add_argument(*_flags("diagnose_quick"), action=ActionYesNo, nargs="?", default=False,
                   help="--diagnose with PGD capped at 50 steps and Square at 300 queries.")
    return p
