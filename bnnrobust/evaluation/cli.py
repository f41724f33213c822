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

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bnnrobust.evaluation.cli_checks import check_outputs, check_request, check_values
from bnnrobust.evaluation.cli_parser import COMMANDS as COMMANDS  # re-exported
from bnnrobust.evaluation.cli_parser import EvalError, build_parser
from bnnrobust.evaluation.cli_parser import coerce_list as coerce_list  # re-exported

__all__ = ["build_parser", "diagnose_main", "main", "resolve_attacks", "run"]

PRESET_NAMES = ("paper", "strongest", "quick")


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
        _signal_section(cfg, model, data, device, rank, extra, md_extra)
    if cfg.sweep:
        _sweep_section(cfg, model, data, device, rank, dataset, name, sweep_attacks, eps_list,
                       out_json, extra)
    if cfg.diagnose and rank == 0:  # gradient-masking checklist (docs/diagnosis.md)
        _diagnose_section(cfg, model, data, device, dataset, attacks, out_json, extra, md_extra)
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


# -- the optional sections of run(): each adds its entry to ``extra`` (the JSON body) and, for
# the Markdown report, its text to ``md_extra``
def _signal_section(cfg: Any, model: torch.nn.Module, data: Any, device: torch.device,
                    rank: int, extra: dict[str, Any], md_extra: list[str]) -> None:
    """``--signal_propagation``: the paper's Table 12 rows on the first ``signal_n`` samples."""
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


def _sweep_section(cfg: Any, model: torch.nn.Module, data: Any, device: torch.device, rank: int,
                   dataset: str | None, name: str, sweep_attacks: list[Any],
                   eps_list: list[float], out_json: Path, extra: dict[str, Any]) -> None:
    """``--sweep``: accuracy vs eps, written next to the results (``<stem>_sweep.json/.png``)."""
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


def _diagnose_section(cfg: Any, model: torch.nn.Module, data: Any, device: torch.device,
                      dataset: str | None, attacks: dict[str, Any], out_json: Path,
                      extra: dict[str, Any], md_extra: list[str]) -> None:
    """``--diagnose`` (rank 0): the gradient-masking checklist, ``<stem>_diagnosis.json``."""
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
