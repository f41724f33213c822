"""``python evaluate.py --config configs/eval/X.yaml --ckpt PATH [flags]``.

Every YAML key is also a flag of the same name (jsonargparse; flags win over the YAML;
``--signal-propagation`` and ``--signal_propagation`` are the same flag)::

    ckpt: logs/convnet_bc/checkpoints/last.ckpt   # or --ckpt
    train_config: null        # training YAML, when the checkpoint lacks the network's config
    attacks: paper            # a preset (paper | strongest | quick) or a list of names/dicts
    n: 1000                   # first n samples of the split (null = all)
    batch_size: 256
    seed: 0
    split: test               # test | val
    device: auto              # auto | cpu | cuda | cuda:1
    dataset: null             # preset dataset; default: the checkpoint's data module
    data: {}                  # data module overrides, e.g. {data_dir: /data/fmnist}
    output: null              # JSON path; default <run>/eval/results.json (+ .md next to it)
    save_adv: null            # folder for adversarial examples (<attack>.pt)
    sweep: false              # also run an accuracy-vs-eps sweep
    sweep_eps: [0.0, 0.02, 0.05, 0.1, 0.2]
    sweep_attacks: [fgsm, pgd]
    signal_propagation: false # paper Table 12 rows on the first signal_n samples
    signal_n: 500
    diagnose: false           # gradient-masking checklist (docs/diagnosis.md) -> <output>_diagnosis.json
    diagnose_n: 200           # its seeded subset; diagnose_eps: null (largest L∞ eps of the attacks)

A transfer (black-box) attack names a checkpoint as its source:
``{name: transfer, source: logs/convnet_ref/checkpoints/last.ckpt, attack: pgd}`` crafts the
examples on that network and scores them on ``--ckpt``'s (paper Fig. 1c).

Lists can be given as ``--attacks pgd pgd++njs`` or ``--attacks '[pgd, {name: pgd, eps: 0.05}]'``;
``--preset quick`` is shorthand for ``--attacks quick``. Under ``torchrun`` (``WORLD_SIZE``
> 1) the process group is initialized and the samples are sharded over the processes; the
reports are written by rank 0 (see ``docs/evaluation.md``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["build_parser", "main", "normalize_argv", "resolve_attacks"]

PRESET_NAMES = ("paper", "strongest", "quick")
_LIST_FLAGS = ("--attacks", "--sweep_eps", "--sweep_attacks")
_BOOL_FLAGS = ("--sweep", "--signal_propagation", "--progress", "--diagnose", "--diagnose_quick")


class EvalError(ValueError):
    """A user error of the evaluation command (printed as one paragraph, exit code 2)."""


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="evaluate.py", description=(
        "Evaluate a trained checkpoint: clean accuracy and adversarial accuracy per attack "
        "(eps in [0, 1] pixel units, accuracies in percent), written as JSON and Markdown."),
        default_env=False)
    p.add_argument("--config", action=ActionConfigFile, help="Evaluation YAML (configs/eval/*.yaml).")
    p.add_argument("--ckpt", type=str | None, default=None,
                   help="Checkpoint written by train.py, or zoo:NAME (bnnrobust.zoo).")
    p.add_argument("--allow_module", type=list[str], default=[],
                   help="Modules (besides bnnrobust, torch, torchvision, timm) whose classes the "
                        "checkpoint may name; checked before anything is imported.")
    p.add_argument("--train_config", type=str | None, default=None,
                   help="Training YAML to rebuild the model (else the checkpoint's hyperparameters).")
    p.add_argument("--attacks", type=list[str | dict[str, Any]] | str | None, default="paper",
                   help="Preset name (paper | strongest | quick) or list of attack names/dicts.")
    p.add_argument("--n", type=int | None, default=1000, help="Evaluate the first n samples (null: all).")
    p.add_argument("--batch_size", type=int, default=256, help="Samples per attack batch.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the attacks' random starts.")
    p.add_argument("--split", type=Literal["test", "val"], default="test", help="Data split.")
    p.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N.")
    p.add_argument("--dataset", type=str | None, default=None,
                   help="Dataset whose presets to use (default: the checkpoint's data module).")
    p.add_argument("--data", type=dict[str, Any] | None, default=None,
                   help="Data module init overrides, e.g. '{data_dir: /data}'.")
    p.add_argument("--output", type=str | None, default=None,
                   help="Results JSON path (default <run>/eval/results.json); Markdown next to it.")
    p.add_argument("--save_adv", type=str | None, default=None,
                   help="Folder for adversarial examples, one <attack>.pt per attack.")
    p.add_argument("--sweep", type=bool, default=False, help="Also run an accuracy-vs-eps sweep.")
    p.add_argument("--sweep_eps", type=list[float] | None, default=None,
                   help="eps values of the sweep (pixel units); default: 0..2x the preset's PGD eps.")
    p.add_argument("--sweep_attacks", type=list[str | dict[str, Any]] | None, default=None,
                   help="Attacks of the sweep (default: fgsm, pgd, pgd++njs, pgd++hns).")
    p.add_argument("--signal_propagation", type=bool, default=False,
                   help="Print and save the paper's Table 12 signal-propagation rows.")
    p.add_argument("--signal_n", type=int, default=500, help="Samples for --signal_propagation.")
    p.add_argument("--progress", type=bool, default=True, help="Show progress bars.")
    # -- gradient-masking diagnosis (bnnrobust/evaluation/diagnose/, docs/diagnosis.md) --
    p.add_argument("--diagnose", type=bool, default=False,
                   help="Run the gradient-masking checklist and save <results>_diagnosis.json.")
    p.add_argument("--diagnose_n", type=int, default=200, help="Seeded subset size of --diagnose.")
    p.add_argument("--diagnose_eps", type=float | None, default=None,
                   help="eps of --diagnose (pixel units; default: the largest L∞ eps of the attacks).")
    p.add_argument("--diagnose_quick", type=bool, default=False,
                   help="--diagnose with PGD capped at 50 steps and Square at 300 queries.")
    return p


def normalize_argv(argv: list[str]) -> list[str]:
    """Dashes → underscores in flag names; ``--preset X`` → ``--attacks X``; space lists → YAML
    lists; a bare boolean flag (``--sweep``) → ``--sweep true``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            name = "--" + name[2:].replace("-", "_")
            if name == "--preset":
                name = "--attacks"
            if name in _BOOL_FLAGS and not eq and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                out += [name, "true"]  # a bare boolean flag means true
                i += 1
                continue
            if name in _LIST_FLAGS and not eq:
                values = []
                j = i + 1
                while j < len(argv) and not argv[j].startswith("--"):
                    values.append(argv[j])
                    j += 1
                if len(values) > 1:
                    out += [name, "[" + ", ".join(values) + "]"]
                    i = j
                    continue
                single = values[0].lstrip() if len(values) == 1 else ""
                if single and not single.startswith("[") and (name != "--attacks" or single.startswith("{")):
                    out += [name, f"[{values[0]}]"]
                    i = j
                    continue
            out.append(name + eq + value)
        else:
            out.append(tok)
        i += 1
    return out


def resolve_attacks(
    spec: Any,
    dataset: str | None,
    seed: int | None = None,
    *,
    load_source: Callable[[str], torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """``"paper"``/``"strongest"``/``"quick"`` or a list of names/dicts → ``{name: Attack}``.

    A ``{name: transfer, source: PATH, attack: spec}`` item gets the model of the checkpoint
    ``PATH`` as its source (``load_source(PATH)``; default: :func:`load_system` on the CPU,
    each path loaded once).
    """
    from bnnrobust.attacks.factory import build_attack, list_attacks
    from bnnrobust.attacks.presets import preset_attacks

    if spec is None or spec == []:
        return {}
    if isinstance(spec, str):
        if spec.strip().lower() in PRESET_NAMES:
            if dataset is None:
                raise EvalError(f"The attack preset {spec!r} needs a dataset; give --dataset "
                                "(cifar10, cifar100, fmnist, mnist, synthetic).")
            return preset_attacks(dataset, spec.strip().lower())
        spec = [spec]
    attacks: dict[str, Any] = {}
    sources: dict[str, torch.nn.Module] = {}
    for item in spec:
        if isinstance(item, str) and item.strip().lower() in PRESET_NAMES:
            for name, atk in resolve_attacks(item, dataset, seed, load_source=load_source).items():
                attacks.setdefault(name, atk)
            continue
        label = None
        if isinstance(item, dict):
            item = dict(item)
            label = item.pop("label", None)
            if str(item.get("name", "")).strip().lower() == "transfer" \
                    and isinstance(item.get("source"), str | Path):
                path = str(item["source"])
                if path not in sources:
                    sources[path] = (load_source or _load_source_model)(path)
                item["source"] = sources[path]
        try:
            atk = build_attack(item, dataset=dataset)
        except (ValueError, TypeError) as err:
            known = "" if "pgd++njs" in str(err) else f" Known names: {', '.join(list_attacks())}."
            raise EvalError(f"Bad attack {item!r}: {err}{known} Presets: "
                            f"{', '.join(PRESET_NAMES)}.") from None
        name = str(label or atk.name)
        if name in attacks:
            raise EvalError(f"The attack name {name!r} appears twice; give the dicts distinct "
                            "'label' keys, e.g. {name: pgd, eps: 0.05, label: pgd_eps0.05}.")
        attacks[name] = atk
    return attacks


def _load_source_model(path: str) -> torch.nn.Module:
    """The network of a training checkpoint, in eval mode on the CPU (a transfer source)."""
    from bnnrobust.evaluation.checkpoint import CheckpointError, load_system

    try:
        if path.startswith("zoo:"):
            from bnnrobust import zoo

            return zoo.load(path)
        system, _ = load_system(path)
    except (CheckpointError, RuntimeError) as err:
        raise EvalError(f"The transfer source {path!r} cannot be loaded: {err}") from None
    net = getattr(system, "model", None)
    return (net if isinstance(net, torch.nn.Module) else system).eval()


def _init_distributed() -> tuple[int, int]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _dataset_name(system: Any, datamodule: Any, override: str | None) -> str | None:
    if override:
        return override
    name = getattr(datamodule, "dataset_name", None)
    if name and name != "unknown":
        return str(name)
    return getattr(system, "attack_dataset", None)


def _split_data(datamodule: Any, split: str) -> Any:
    if datamodule is None:
        raise EvalError("The checkpoint stores no data module; pass the training config with "
                        "--train_config so that the evaluation data can be built.")
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    ds = datamodule.test_set if split == "test" else datamodule.val_set
    if ds is None:
        raise EvalError(f"The data module {type(datamodule).__name__} has no {split} split.")
    return ds


def _first(ds: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from bnnrobust.evaluation.runner import _Samples

    src = _Samples(ds, n)
    total = len(src) if n is None else min(n, len(src))
    return src.get(0, total)


def _default_sweep_eps(attacks: dict[str, Any]) -> list[float]:
    eps = [float(a.describe().get("eps")) for a in attacks.values()
           if isinstance(a.describe().get("eps"), int | float) and a.describe().get("norm") == "linf"]
    top = max(eps) if eps else 8 / 255
    return [round(top * f, 6) for f in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)]


def run(cfg: Any) -> dict[str, Any]:
    """Run an evaluation from a parsed config (see module docstring); returns the JSON body."""
    from bnnrobust.evaluation.checkpoint import load_system, run_dir_of
    from bnnrobust.evaluation.report import format_table, write_reports
    from bnnrobust.evaluation.runner import adv_path, evaluate, resolve_device

    if not cfg.ckpt:
        raise EvalError("No checkpoint given; pass --ckpt PATH (a .ckpt written by train.py).")
    if cfg.n is not None and cfg.n < 1:
        raise EvalError(f"--n must be a positive integer or null (all samples), got {cfg.n!r}.")
    if cfg.batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {cfg.batch_size!r}.")
    rank, world = _init_distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    ckpt_file = Path(cfg.ckpt)
    if str(cfg.ckpt).startswith("zoo:"):
        from bnnrobust import zoo

        try:
            ckpt_file = zoo.path(cfg.ckpt)
        except zoo.ZooError as err:
            raise EvalError(str(err)) from None
    system, datamodule = load_system(ckpt_file, cfg.train_config, data_overrides=cfg.data,
                                     allow_modules=cfg.allow_module)
    net = getattr(system, "model", None)
    model: torch.nn.Module = net if isinstance(net, torch.nn.Module) else system
    dataset = _dataset_name(system, datamodule, cfg.dataset)
    attacks = resolve_attacks(cfg.attacks, dataset)
    sweep_attacks = cfg.sweep_attacks or ["fgsm", "pgd", "pgd++njs", "pgd++hns"]
    eps_list = cfg.sweep_eps if cfg.sweep_eps is not None else _default_sweep_eps(attacks)
    check_request(cfg, attacks, dataset, sweep_attacks, eps_list)
    data = _split_data(datamodule, cfg.split)
    run_dir = (Path("logs") / str(cfg.ckpt).removeprefix("zoo:") if str(cfg.ckpt).startswith("zoo:")
               else run_dir_of(ckpt_file))
    out_json = Path(cfg.output) if cfg.output else run_dir / "eval" / "results.json"
    partial = out_json.with_name(out_json.stem + ".partial.json")
    if rank == 0:  # every output is writable before the first attack runs
        check_outputs(out_json, cfg.save_adv)
    n_classes = getattr(datamodule, "num_classes", None)
    result = evaluate(model, data, attacks, n=cfg.n, seed=cfg.seed, device=device,
                      progress=cfg.progress, batch_size=cfg.batch_size, save_adv=cfg.save_adv,
                      num_classes=n_classes if isinstance(n_classes, int) else None,
                      partial_results=partial)
    if rank == 0 and result.extra.get("resumed"):
        print(f"resumed: {', '.join(result.extra['resumed'])} taken from {partial} (same "
              "weights, data and settings); delete that file to run them again.", file=sys.stderr)
    extra: dict[str, Any] = {"checkpoint": str(cfg.ckpt), "dataset": dataset, "split": cfg.split}
    md_extra: list[str] = []
    if cfg.save_adv:
        extra["adv_examples"] = {name: str(adv_path(cfg.save_adv, name)) for name in attacks}
    if cfg.signal_propagation:
        try:
            from bnnrobust.metrics.signal import format_table as signal_table
            from bnnrobust.metrics.signal import signal_propagation
        except ImportError as err:
            raise EvalError(f"--signal_propagation is not available: bnnrobust.metrics.signal "
                            f"cannot be imported ({err}).") from None
        xs, ys = _first(data, min(cfg.signal_n, cfg.n or cfg.signal_n))
        stats = signal_propagation(model.to(device), xs.to(device), ys.to(device))
        table = signal_table(stats)
        extra["signal_propagation"] = stats.to_dict()
        md_extra.append("## Signal propagation (paper Table 12)\n\n" + table)
        if rank == 0:
            print("\nSignal propagation (paper Table 12):\n" + table)
    if cfg.sweep:
        from bnnrobust.evaluation.sweep import eps_sweep

        xs, ys = _first(data, cfg.n)
        sweep_json = out_json.with_name(out_json.stem + "_sweep.json")
        sweep = eps_sweep(model, xs, ys, sweep_attacks, eps_list, dataset=dataset, seed=cfg.seed,
                          batch_size=cfg.batch_size, device=device, progress=cfg.progress,
                          json_path=sweep_json if rank == 0 else None,
                          png_path=sweep_json.with_suffix(".png") if rank == 0 else None)
        extra["sweep"] = {"json": str(sweep_json), "png": str(sweep_json.with_suffix(".png")),
                          "non_monotone": sweep["non_monotone"]}
        if sweep["non_monotone"] and rank == 0:
            print(f"warning: accuracy rises with eps for {sweep['non_monotone']} "
                  "(a sign of gradient masking).", file=sys.stderr)
    if cfg.diagnose and rank == 0:  # gradient-masking checklist (docs/diagnosis.md)
        from bnnrobust.evaluation.diagnose import cli_diagnose

        xs, ys = _first(data, cfg.n)
        diag = cli_diagnose(model.to(device), xs, ys, attacks=attacks, eps=cfg.diagnose_eps,
                            n_samples=cfg.diagnose_n, seed=cfg.seed, batch_size=cfg.batch_size,
                            quick=cfg.diagnose_quick, progress=cfg.progress, device=device)
        diag_json = out_json.with_name(out_json.stem + "_diagnosis.json")
        diag_json.parent.mkdir(parents=True, exist_ok=True)
        diag_json.write_text(diag.to_json())
        extra["diagnosis"] = {"json": str(diag_json), "verdict": diag.verdict,
                              "recommendations": diag.recommendations}
        md_extra.append("## Gradient-masking diagnosis\n\n```\n" + diag.format() + "\n```")
        print("\n" + diag.format())
    body: dict[str, Any] = {}
    if rank == 0:
        title = f"{run_dir.name}: {ckpt_file.name} ({dataset}, {cfg.split})"
        print(format_table(result, title))
        body = write_reports(result, out_json, title=title,
                             markdown_extra="\n\n".join(md_extra) or None, **extra)
        partial.unlink(missing_ok=True)  # the full results are written
        print(f"results: {out_json}  (Markdown: {out_json.with_suffix('.md')})")
    return body


def check_outputs(out_json: Path, save_adv: str | None) -> None:
    """Refuse, before any attack, an output that cannot be written (one paragraph each)."""
    targets = [(out_json.parent, "--output (its folder)")]
    if save_adv:
        targets.append((Path(save_adv), "--save_adv"))
    for folder, flag in targets:
        if folder.exists() and not folder.is_dir():
            raise EvalError(f"{flag}: {str(folder)!r} exists and is not a folder; give another "
                            "path.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".bnnrobust_write_test_{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise EvalError(f"{flag}: cannot write to {str(folder)!r} ({err.strerror or err}); "
                            "give a writable folder (--output PATH.json, --save_adv DIR).") from None
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


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``evaluate.py`` / ``python -m bnnrobust.evaluation.cli``."""
    from bnnrobust.evaluation.checkpoint import CheckpointError

    argv = normalize_argv(list(sys.argv[1:] if args is None else args))
    cfg = build_parser().parse_args(argv)
    try:
        return run(cfg)
    except (CheckpointError, EvalError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
