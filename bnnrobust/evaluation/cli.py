"""``python evaluate.py --config configs/eval/X.yaml --ckpt PATH [flags]`` (= ``bnnrobust evaluate``).

Every YAML key is also a flag of the same name (jsonargparse; flags win over the YAML; a flag
with an underscore also has a dashed spelling: ``--signal-propagation`` = ``--signal_propagation``)::

    ckpt: logs/convnet_bc/checkpoints/last.ckpt   # or --ckpt; or model: (below)
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
    run_name: null            # the model's name in titles (default: the checkpoint's run)
    save_adv: null            # folder for adversarial examples (<attack>.pt)
    sweep: false              # also run an accuracy-vs-eps sweep
    sweep_eps: [0.0, 0.02, 0.05, 0.1, 0.2]
    sweep_attacks: [fgsm, pgd]
    signal_propagation: false # paper Table 12 rows on the first signal_n samples
    signal_n: 500
    diagnose: false           # gradient-masking checklist (docs/diagnosis.md) -> <output>_diagnosis.json
    diagnose_n: 200           # its seeded subset; diagnose_eps: null (largest L∞ eps of the attacks)

A network bnnrobust never trained (``docs/evaluation.md``, "Any model";
:mod:`bnnrobust.evaluation.any_model`) replaces ``ckpt``::

    model: mypkg.nets:Net     # or timm:NAME, torchvision:NAME (never downloaded)
    model_args: {num_classes: 10}
    weights: net.pt           # state dict, Lightning checkpoint or zoo:NAME
    binarizer: null           # bnnrobust.binarize name (bc, md_tanh_s, hubara, ...)
    normalize: null           # {mean: [...], std: [...]}: a Normalize in front
    dataset: cifar10          # required: the data and the attack presets

A transfer (black-box) attack names a checkpoint as its source:
``{name: transfer, source: logs/convnet_ref/checkpoints/last.ckpt, attack: pgd}`` crafts the
examples on that network and scores them on ``--ckpt``'s (paper Fig. 1c).

List flags take several values or one YAML list: ``--attacks pgd pgd++njs`` =
``--attacks '[pgd, pgd++njs]'``; ``--preset quick`` is ``--attacks quick``. Boolean flags take
``--sweep`` (true), ``--sweep false`` or ``--no_sweep``. Under ``torchrun`` (``WORLD_SIZE``
> 1) the process group is initialized and the samples are sharded over the processes; the
reports are written by rank 0 (see ``docs/evaluation.md``). ``bnnrobust diagnose`` is this
command with the diagnosis on and no attack table (:func:`diagnose_main`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["build_parser", "diagnose_main", "main", "resolve_attacks", "run"]

PRESET_NAMES = ("paper", "strongest", "quick")
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
        if isinstance(item, dict):
            item = dict(item)  # the transfer source is replaced below, not in the caller's spec
            if str(item.get("name", "")).strip().lower() == "transfer" \
                    and isinstance(item.get("source"), str | Path):
                path = str(item["source"])
                if path not in sources:
                    sources[path] = (load_source or _load_source_model)(path)
                item["source"] = sources[path]
        try:
            atk = build_attack(item, dataset=dataset)
        except (ValueError, TypeError) as err:
            listed = str(err).startswith("Unknown attack") or "Known names" in str(err)
            known = "" if listed else f" Known names: {', '.join(list_attacks())}."
            raise EvalError(f"Bad attack {item!r}: {err}{known} Presets: "
                            f"{', '.join(PRESET_NAMES)}.") from None
        name = atk.name  # a dict's 'label', set by build_attack
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
    from bnnrobust.evaluation.runner import SampleSource

    src = SampleSource(ds, n)
    total = len(src) if n is None else min(n, len(src))
    return src.get(0, total)


def _default_sweep_eps(attacks: dict[str, Any]) -> list[float]:
    eps = [float(a.describe().get("eps")) for a in attacks.values()
           if isinstance(a.describe().get("eps"), int | float) and a.describe().get("norm") == "linf"]
    top = max(eps) if eps else 8 / 255
    return [round(top * f, 6) for f in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)]


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


def _safe_name(name: str) -> str:
    """``tests.nets:Net`` → ``tests.nets_Net``: a folder name for the default output."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _checkpoint_network(cfg: Any) -> tuple[torch.nn.Module, Any, str | None, str, Path]:
    """``(network, data module, dataset, name, run folder)`` of ``--ckpt``."""
    from bnnrobust.evaluation.checkpoint import load_system, run_dir_of
    from bnnrobust.evaluation.report import run_name

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
    run_dir = (Path("logs") / str(cfg.ckpt).removeprefix("zoo:") if str(cfg.ckpt).startswith("zoo:")
               else run_dir_of(ckpt_file))
    return model, datamodule, dataset, cfg.run_name or run_name(cfg.ckpt), run_dir


def _any_network(cfg: Any) -> tuple[torch.nn.Module, Any, str | None, str, Path]:
    """``(network, data module, dataset, name, run folder)`` of ``--model`` (any_model.py)."""
    from bnnrobust.evaluation.any_model import build_datamodule, build_model

    datamodule = build_datamodule(cfg.dataset, cfg.data)  # checks --dataset before the model
    model = build_model(cfg.model, model_args=cfg.model_args, weights=cfg.weights,
                        binarizer=cfg.binarizer, normalize=cfg.normalize)
    name = cfg.run_name or cfg.model
    return model, datamodule, datamodule.dataset_name, name, Path("logs") / _safe_name(name)


def _probe(model: torch.nn.Module, data: Any, spec: str, dataset: str | None) -> None:
    """One forward pass on two samples: a network that cannot take the data fails here, in
    one paragraph, before any attack."""
    xs, _ = _first(data, 2)
    try:
        with torch.no_grad():
            model(xs)
    except Exception as err:
        raise EvalError(
            f"--model {spec!r} cannot take the {dataset} images (shape {tuple(xs.shape)}, "
            f"[0, 1] pixels): {type(err).__name__}: {' '.join(str(err).split())[:300]}. Check "
            "--model_args (e.g. num_classes, in_chans/in_channels) and --data (e.g. "
            "{in_channels: 3, image_size: 32} for synthetic).") from None


def run(cfg: Any, *, command: str = "evaluate") -> dict[str, Any]:
    """Run an evaluation from a parsed config (see module docstring); returns the JSON body.

    ``command="diagnose"`` (``bnnrobust diagnose``): the diagnosis is required, and the
    default output is ``<run>/eval/diagnosis/results.json`` (an evaluation's is not replaced).
    """
    from bnnrobust.evaluation.report import format_table, write_reports
    from bnnrobust.evaluation.runner import adv_path, evaluate, resolve_device

    check_values(cfg)
    if command == "diagnose" and not cfg.diagnose:
        raise EvalError("`bnnrobust diagnose` runs the gradient-masking checklist; drop "
                        "--diagnose false (or use `bnnrobust evaluate`).")
    rank, world = _init_distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    if cfg.model:
        model, datamodule, dataset, name, run_dir = _any_network(cfg)
    else:
        model, datamodule, dataset, name, run_dir = _checkpoint_network(cfg)
    attacks = resolve_attacks(cfg.attacks, dataset)
    sweep_attacks = cfg.sweep_attacks or ["fgsm", "pgd", "pgd++njs", "pgd++hns"]
    eps_list = cfg.sweep_eps if cfg.sweep_eps is not None else _default_sweep_eps(attacks)
    check_request(cfg, attacks, dataset, sweep_attacks, eps_list)
    data = _split_data(datamodule, cfg.split)
    if cfg.model:
        _probe(model, data, cfg.model, dataset)
        if cfg.weights is None and rank == 0:
            print(f"note: no --weights: {cfg.model} is evaluated with the weights its "
                  "constructor gave it.", file=sys.stderr)
    out_dir = run_dir / "eval" / ("diagnosis" if command == "diagnose" else "")
    out_json = Path(cfg.output) if cfg.output else out_dir / "results.json"
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
    extra: dict[str, Any] = ({"model": cfg.model, "model_args": cfg.model_args,
                              "weights": cfg.weights, "binarizer": cfg.binarizer,
                              "normalize": cfg.normalize} if cfg.model
                             else {"checkpoint": str(cfg.ckpt)})
    extra.update(dataset=dataset, split=cfg.split)
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
                          png_path=sweep_json.with_suffix(".png") if rank == 0 else None,
                          model_name=name)
        extra["sweep"] = {"json": str(sweep_json), "png": str(sweep_json.with_suffix(".png")),
                          "non_monotone": sweep["non_monotone"]}
        if sweep["non_monotone"] and rank == 0:
            print(f"warning: accuracy rises with eps for {sweep['non_monotone']} "
                  "(a sign of gradient masking).", file=sys.stderr)
    if cfg.diagnose and rank == 0:  # gradient-masking checklist (docs/diagnosis.md)
        from bnnrobust.evaluation.diagnose import cli_diagnose

        xs, ys = _first(data, cfg.n)
        # the threat model: the attacks' largest eps, else the dataset's quick preset's
        threat = attacks or (resolve_attacks("quick", dataset) if dataset else {})
        diag = cli_diagnose(model.to(device), xs, ys, attacks=threat, eps=cfg.diagnose_eps,
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
        details = ", ".join(str(v) for v in (dataset, cfg.split) if v)
        title = f"{name} — {details}" if details else name  # report.report_title's form
        print(format_table(result, title, dataset=dataset))
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


def main(args: list[str] | None = None, *, prog: str = "evaluate.py",
         command: str = "evaluate") -> dict[str, Any]:
    """Entry point of ``evaluate.py`` / ``bnnrobust evaluate``; returns the JSON body.

    User errors print one ``error: ...`` paragraph and exit with code 2.
    """
    from bnnrobust.evaluation.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if args is None else args)
    cfg = build_parser(prog, command=command).parse_args(argv)
    try:
        return run(cfg, command=command)
    except (CheckpointError, EvalError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def diagnose_main(args: list[str] | None = None, *, prog: str = "bnnrobust diagnose") -> None:
    """Entry point of ``bnnrobust diagnose``: the evaluation command with ``--diagnose`` on and
    no attacks by default (``--attacks`` adds an attack table); see docs/diagnosis.md."""
    main(args, prog=prog, command="diagnose")


if __name__ == "__main__":  # pragma: no cover
    main()
