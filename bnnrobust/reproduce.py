"""The paper's findings, reproduced offline on Fashion-MNIST on 2 CPU cores.

    python -m bnnrobust.reproduce --out results/fmnist            # the full run (~1.5-2 h)
    python -m bnnrobust.reproduce --out results/fmnist --zoo      # reuse the zoo's networks (~1 h)
    python -m bnnrobust.reproduce --out /tmp/repro --quick        # toy size, ~1-2 min (tests)
    python -m bnnrobust.reproduce --out /tmp/repro --quick --synthetic   # no dataset needed

What it does (every number comes from the project's own code paths):

1. trains seven ConvNets with ``train.py``'s code (:func:`bnnrobust.training.main`): REF
   (float), BNN-WQ (MD-tanh-S, BC, BC with a hidden FC layer) and BNN-WAQ (Hubara) from the
   converged recipes of ``configs/fmnist/`` (``--zoo``: the zoo's checkpoints of those
   recipes, checked against them), and adversarially trained REF* and BNN-WQ*
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
killed half-way resumes from its ``last.ckpt``). A stage whose output was deleted is run
again, and so is every stage that depends on it. A folder holding a *complete* run, a run
made with other settings, or files that are not a reproduction is never overwritten without
``--force`` (which deletes the earlier reproduction in ``--out`` and starts from scratch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import yaml

if TYPE_CHECKING:
    from bnnrobust.data.base import ImageDataModule

__all__ = [
    "ATTACK_ROWS",
    "MODELS",
    "PAPER",
    "ModelSpec",
    "ReproError",
    "Settings",
    "Stage",
    "attack_suite",
    "build_report",
    "main",
    "plan_stages",
    "run",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MARKDOWN = REPO_ROOT / "docs" / "results.md"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ReproError(RuntimeError):
    """A user error of the reproduction command (printed as one paragraph, exit code 2)."""


# -- what is trained ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """One trained network of the reproduction.

    Attributes:
        key: short name, used in file names (``eval_<key>.json``) and run folders.
        label: the paper's name for it (table column).
        config: training YAML, relative to the repository root (the converged recipes of
            ``configs/fmnist/``, the adversarial trainings of ``configs/reproduce/``).
        family: ``"ref"`` (float), ``"wq"`` (binary weights) or ``"waq"`` (binary weights
            and activations).
        adversarial: trained with PGD adversarial training.
        zoo: the model-zoo entry trained by ``train.py`` from the same recipe, reused instead
            of training with ``--zoo`` (its checksum, architecture and epoch are checked).
    """

    key: str
    label: str
    config: str
    family: str
    adversarial: bool = False
    zoo: str | None = None


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("ref", "REF", "configs/fmnist/convnet_ref.yaml", "ref", zoo="fmnist_ref"),
    ModelSpec("wq_md_tanh_s", "BNN-WQ (MD-tanh-S)", "configs/fmnist/convnet_md_tanh_s.yaml", "wq",
              zoo="fmnist_bnn_wq_md_tanh_s"),
    ModelSpec("wq_bc", "BNN-WQ (BC)", "configs/fmnist/convnet_bc.yaml", "wq",
              zoo="fmnist_bnn_wq_bc"),
    ModelSpec("wq_bc_hidden", "BNN-WQ (BC, hidden FC)", "configs/fmnist/convnet_bc_hidden.yaml",
              "wq", zoo="fmnist_bnn_wq_bc_hidden"),
    ModelSpec("waq_hubara", "BNN-WAQ (Hubara)", "configs/fmnist/convnet_hubara.yaml", "waq",
              zoo="fmnist_bnn_waq_hubara"),
    ModelSpec("adv_ref", "REF* (adv.)", "configs/reproduce/adv_ref.yaml", "ref", adversarial=True),
    ModelSpec("adv_wq_md_tanh_s", "BNN-WQ* (adv., MD-tanh-S)",
              "configs/reproduce/adv_wq_md_tanh_s.yaml", "wq", adversarial=True),
)
_BY_KEY = {m.key: m for m in MODELS}
REF_KEY = "ref"
WQ_KEY = "wq_md_tanh_s"
WAQ_KEY = "waq_hubara"
WQ_HIDDEN_KEY = "wq_bc_hidden"

#: (key in the eval JSON, row label) in table order; ``{S}``, ``{Q}``, ``{R}`` are filled in
ATTACK_ROWS: tuple[tuple[str, str], ...] = (
    ("fgsm", "FGSM"),
    ("fgsm++njs", "FGSM++ (NJS)"),
    ("fgsm++hns", "FGSM++ (HNS)"),
    ("pgd", "PGD L∞"),
    ("pgd++njs", "PGD++ L∞ (NJS)"),
    ("pgd++hns", "PGD++ L∞ (HNS)"),
    ("pgd_l2", "PGD L2"),
    ("pgd_l2++njs", "PGD++ L2 (NJS)"),
    ("pgd_l2++hns", "PGD++ L2 (HNS)"),
    ("pgd_dlr", "PGD L∞, DLR loss"),
    ("apgd-ce", "APGD-CE ({S} steps)"),
    ("apgd-dlr", "APGD-DLR ({S} steps)"),
    ("apgd-t", "APGD-T ({S} steps × 9 targets)"),
    ("square", "Square ({Q} queries)"),
    ("transfer_pgd", "transfer PGD L∞ from REF (black-box)"),
    ("pgd_restarts", "PGD L∞, {R} restarts"),
    ("strongest", "strongest cascade"),
)
_NAMED_ATTACKS = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns", "pgd_l2",
                  "pgd_l2++njs", "pgd_l2++hns", "pgd_dlr")
PEERS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
SWEEP_ATTACKS: tuple[str, ...] = ("fgsm", "pgd", "pgd++njs", "pgd++hns")


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one reproduction (``full()`` or ``quick()``), recorded in the manifest.

    Training overrides are ``None`` where the YAML in ``configs/reproduce/`` decides. eps and
    step sizes are the Fashion-MNIST preset (:mod:`bnnrobust.attacks.presets`): FGSM/PGD L∞
    eps 0.1 (PGD step 0.01, 20 steps), PGD L2 eps 1.5 (step 0.15, 20 steps).
    """

    profile: str
    synthetic: bool = False
    train_subset: int | None = None
    adv_train_subset: int | None = None
    val_size: int | None = None
    max_epochs: int | None = None
    train_batch_size: int | None = None
    width: float | None = None
    synthetic_samples: int = 512
    n_eval: int = 1000
    batch_size: int = 250
    pgd_steps: int | None = None
    apgd_steps: int = 50
    square_queries: int = 500
    restarts: int = 20
    signal_n: int = 500
    sweep_n: int = 500
    sweep_eps: tuple[float, ...] = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)
    sweep_models: tuple[str, ...] = (REF_KEY, WQ_KEY, WQ_HIDDEN_KEY, WAQ_KEY)
    peer_check_models: tuple[str, ...] = (WQ_KEY, WAQ_KEY)
    rho_n: int = 500
    seed: int = 0
    zoo: bool = False
    clever_n: int = 10
    clever_batches: int = 50
    clever_batch_size: int = 10
    clever_radius: float = 5.0
    clever_models: tuple[str, ...] = (WQ_KEY, WAQ_KEY)

    @classmethod
    def full(cls, synthetic: bool = False, zoo: bool = False) -> Settings:
        """The documented run: the converged ``configs/fmnist/`` recipes (all 55k training
        images, 10 epochs; the BC + hidden FC recipe 5), the adversarial trainings of
        ``configs/reproduce/`` (15k images, 2 epochs), 1,000 test images. ``zoo``: reuse the
        model zoo's checkpoints of the recipes instead of training them again."""
        s = cls(profile="full", synthetic=synthetic, zoo=zoo)
        return replace(s, synthetic_samples=20000) if synthetic else s

    @classmethod
    def quick(cls, synthetic: bool = False) -> Settings:
        """The same pipeline at toy size (tests): a few hundred images, tiny budgets."""
        return cls(profile="quick", synthetic=synthetic, train_subset=128, adv_train_subset=64,
                   val_size=32, max_epochs=1, train_batch_size=64, width=0.25,
                   synthetic_samples=128, n_eval=16, batch_size=16, pgd_steps=2, apgd_steps=2,
                   square_queries=4, restarts=2, signal_n=8, sweep_n=16,
                   sweep_eps=(0.0, 0.1), sweep_models=(REF_KEY, WQ_KEY), rho_n=16,
                   clever_n=2, clever_batches=2, clever_batch_size=2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from the manifest

    @property
    def dataset(self) -> str:
        """Attack-preset dataset name."""
        return "synthetic" if self.synthetic else "fmnist"


# -- small helpers --------------------------------------------------------------------------------
def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _write_json(path: Path, body: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, allow_nan=True) + "\n")
    tmp.replace(path)  # atomic: an interrupted write never leaves a half file behind


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- stages ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One resumable step of the pipeline.

    Attributes:
        key: unique id (``"train/ref"``); its marker is ``<out>/stages/<key with / -> __>.json``.
        title: shown in the progress lines.
        estimate_s: generous estimate of its duration on this machine (seconds).
        outputs: files that must exist for the stage to count as finished.
        run: does the work; returns a JSON-able dict stored in the marker.
        deps: keys of the stages whose outputs it reads (rerun when one of them reran).
        check: optional extra validity check of a finished stage (e.g. checkpoint step).
    """

    key: str
    title: str
    estimate_s: float
    outputs: list[Path]
    run: Callable[[], dict[str, Any]]
    deps: list[str] = field(default_factory=list)
    check: Callable[[dict[str, Any]], str | None] | None = None


class Context:
    """Paths and settings shared by the stages of one run."""

    def __init__(self, out: Path, settings: Settings, markdown: Path, progress: bool) -> None:
        self.out = out
        self.settings = settings
        self.markdown = markdown
        self.progress = progress
        self.step_seconds = 4e-4  # seconds per image-step (fwd+bwd), measured by calibrate()
        self.trained: list[str] = []  # models trained (not reused) during this invocation
        self._models: dict[str, torch.nn.Module] = {}

    # paths
    def run_dir(self, key: str) -> Path:
        return self.out / "runs" / key

    def last_ckpt(self, key: str) -> Path:
        return self.run_dir(key) / "checkpoints" / "last.ckpt"

    def eval_json(self, key: str) -> Path:
        return self.out / f"eval_{key}.json"

    def sweep_json(self, key: str) -> Path:
        return self.out / f"sweep_{key}.json"

    def marker(self, stage_key: str) -> Path:
        return self.out / "stages" / (stage_key.replace("/", "__") + ".json")

    # models and data
    def model(self, key: str) -> torch.nn.Module:
        """The trained network of ``key`` (from its ``last.ckpt``), cached, eval mode."""
        if key not in self._models:
            from bnnrobust.evaluation.checkpoint import load_system

            system, _ = load_system(self.last_ckpt(key))
            self._models[key] = cast(torch.nn.Module, system.model).eval()
        return self._models[key]

    def forget(self, key: str) -> None:
        self._models.pop(key, None)

    def test_data(self, key: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images/labels of the data module stored in ``key``'s checkpoint."""
        from bnnrobust.evaluation.checkpoint import load_system
        from bnnrobust.evaluation.runner import _Samples

        _, dm = load_system(self.last_ckpt(key))
        if dm is None:
            raise ReproError(f"The checkpoint {self.last_ckpt(key)} stores no data module.")
        dm.prepare_data()
        dm.setup("test")
        src = _Samples(cast("ImageDataModule", dm).test_set, n)
        total = min(n, len(src))
        if total < n:
            _log(f"  note: the test set has only {total} images (asked for {n}).")
        return src.get(0, total)


def calibrate(width: float) -> float:
    """Seconds per image-step (one forward+backward of one image) of the ConvNet on this machine.

    Measured on a fresh float ConvNet of the reproduction's width with a 3-step PGD on 64
    images, after a warm-up; the stage estimates are multiples of it.
    """
    from bnnrobust.attacks.pgd import PGD
    from bnnrobust.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = create_model("convnet", num_classes=10, in_channels=1, width=width).eval()
        x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        atk = PGD(eps=0.1, step_size=0.01, steps=3, seed=0)
        atk(net, x[:8], y[:8])
        t0 = time.perf_counter()
        atk(net, x, y)
        dt = time.perf_counter() - t0
    # binarized layers cost a little more than the float net (sign, clipping): x 1.1
    return 1.1 * dt / (64 * 3)


# -- training -------------------------------------------------------------------------------------
def training_config(spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    """The YAML of ``spec`` with the settings' overrides (subset, epochs, width, synthetic data)."""
    path = REPO_ROOT / spec.config
    if not path.is_file():
        raise ReproError(f"Training config {path} is missing; the reproduction needs "
                         f"{spec.config} from the repository.")
    cfg = yaml.safe_load(path.read_text())
    data_args = cfg["data"].setdefault("init_args", {})
    subset = settings.adv_train_subset if spec.adversarial else settings.train_subset
    if settings.train_batch_size is not None:
        data_args["batch_size"] = settings.train_batch_size
    if settings.synthetic:
        n = subset or settings.synthetic_samples
        cfg["data"] = {"class_path": "bnnrobust.data.SyntheticDataModule", "init_args": {
            "num_samples": int(n), "num_classes": 10, "in_channels": 1, "image_size": 28,
            "batch_size": int(data_args.get("batch_size", 128)), "seed": settings.seed}}
    else:
        if subset is not None:
            data_args["train_subset"] = int(subset)
        if settings.val_size is not None:
            data_args["val_size"] = int(settings.val_size)
    trainer = cfg.setdefault("trainer", {})
    if settings.max_epochs is not None:
        trainer["max_epochs"] = int(settings.max_epochs)
    trainer.update({"accelerator": "cpu", "devices": 1})
    # the reproduction attacks every network after training: the recipes' per-epoch
    # robustness monitor would only cost time here
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or []
                            if not str(c.get("class_path", "")).endswith("RobustnessMonitor")]
    if settings.profile == "quick":
        trainer["log_every_n_steps"] = 1
    if settings.width is not None:
        cfg["model"]["init_args"]["model"].setdefault("init_args", {})["width"] = settings.width
    return cfg


def _train_units(spec: ModelSpec, settings: Settings, cfg: dict[str, Any]) -> float:
    """Image-steps of a training run (for the time estimate)."""
    data = cfg["data"].get("init_args", {})
    n = data.get("train_subset") or data.get("num_samples") or 55000
    epochs = int(cfg.get("trainer", {}).get("max_epochs") or 1)
    per_image = 1.0
    if spec.adversarial:
        per_image += int(cfg["model"]["init_args"].get("train_attack", {}).get("steps", 7))
    if spec.family == "waq":
        per_image *= 1.4
    val = data.get("val_size", 5000) if "val_size" in data else data.get("num_samples", 0) // 4
    return epochs * (n * per_image + 0.35 * val)


def _ckpt_position(path: Path) -> tuple[int, int]:
    """``(epoch, global_step)`` stored in a Lightning checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1))


def _contains(got: Any, want: Any) -> bool:
    """``want`` equals ``got``, or is a sub-dict of it (a recipe names only some arguments)."""
    if isinstance(want, Mapping) and isinstance(got, Mapping):
        return all(_contains(got.get(k), v) for k, v in want.items())
    return bool(got == want)


def _zoo_mismatch(ckpt: Mapping[str, Any], cfg: Mapping[str, Any], max_epochs: int) -> str | None:
    """Why a zoo checkpoint was not trained by ``cfg`` (architecture, data, epochs), or None."""
    want = (cfg["model"]["init_args"]["model"].get("init_args") or {})
    want_cls = cfg["model"]["init_args"]["model"].get("class_path")
    got_model = (ckpt.get("hyper_parameters") or {}).get("model") or {}
    got = got_model.get("init_args") or {}
    if got_model.get("class_path") != want_cls:
        return f"network {got_model.get('class_path')!r}, the recipe builds {want_cls!r}"
    for name, value in want.items():
        if not _contains(got.get(name), value):
            return f"{name} = {got.get(name)!r}, the recipe sets {value!r}"
    data = (ckpt.get("datamodule_hyper_parameters") or {})
    want_data = cfg["data"].get("init_args") or {}
    if data.get("_class_path") != cfg["data"].get("class_path"):
        return f"data {data.get('_class_path')!r}, the recipe uses {cfg['data'].get('class_path')!r}"
    for name in ("train_subset", "val_size", "batch_size"):
        if name in want_data and data.get(name) != want_data[name]:
            return f"data {name} = {data.get(name)!r}, the recipe sets {want_data[name]!r}"
    if int(ckpt.get("epoch", -1)) != max_epochs - 1:
        return f"epoch {ckpt.get('epoch')}, the recipe ends at epoch {max_epochs - 1}"
    return None


def _reuse_zoo(ctx: Context, spec: ModelSpec, cfg: dict[str, Any], max_epochs: int,
               cfg_path: Path) -> dict[str, Any]:
    """Copy ``spec``'s zoo checkpoint (checksum verified) to its run folder as ``last.ckpt``."""
    from bnnrobust import zoo

    assert spec.zoo is not None
    try:
        src = zoo.path(spec.zoo)
    except zoo.ZooError as err:
        raise ReproError(f"--zoo: {err}") from None
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    why = _zoo_mismatch(ckpt, cfg, max_epochs)
    if why is not None:
        raise ReproError(f"--zoo: the zoo's {spec.zoo} was not trained by {spec.config} ({why}); "
                         "run without --zoo to train it.")
    dst = ctx.last_ckpt(spec.key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    _log(f"  reused zoo:{spec.zoo} (SHA-256 verified, trained by {spec.config})")
    ctx.forget(spec.key)
    return {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt.get("global_step", -1)),
            "max_epochs": max_epochs, "metrics": zoo.entry(spec.zoo).get("metrics", {}),
            "config": str(cfg_path), "source": f"zoo:{spec.zoo}",
            "sha256": zoo.entry(spec.zoo)["sha256"]}


def _train_stage(ctx: Context, spec: ModelSpec) -> Stage:
    cfg = training_config(spec, ctx.settings)
    cfg_path = ctx.out / "configs" / f"{spec.key}.yaml"
    max_epochs = int(cfg["trainer"].get("max_epochs") or 1)

    def run_it() -> dict[str, Any]:
        from bnnrobust.training import main as train_main

        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# written by python -m bnnrobust.reproduce from {spec.config}"
                  f" ({ctx.settings.profile} profile)\n")
        cfg_path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        if ctx.settings.zoo and spec.zoo is not None:
            return _reuse_zoo(ctx, spec, cfg, max_epochs, cfg_path)
        args = ["--config", str(cfg_path), "--log_dir", str(ctx.out / "runs"),
                "--run_name", spec.key, "--skip_test", "true",
                # one fixed folder per network (not a new version_N per invocation): a rerun
                # resumes the same last.ckpt
                "--checkpoint.dirpath", str(ctx.last_ckpt(spec.key).parent),
                "--seed_everything", str(ctx.settings.seed),
                "--summary_json", str(ctx.run_dir(spec.key) / "summary.json"),
                "--trainer.enable_progress_bar", str(bool(ctx.progress and sys.stdout.isatty())).lower()]
        if ctx.last_ckpt(spec.key).is_file():
            _log(f"  resuming the interrupted training from {ctx.last_ckpt(spec.key)}")
            args += ["--ckpt_path", "last"]
        metrics = train_main(args)
        if not ctx.last_ckpt(spec.key).is_file():
            raise ReproError(f"Training {spec.key} finished without writing {ctx.last_ckpt(spec.key)}.")
        epoch, step = _ckpt_position(ctx.last_ckpt(spec.key))
        ctx.trained.append(spec.key)
        ctx.forget(spec.key)
        return {"epoch": epoch, "global_step": step, "max_epochs": max_epochs,
                "metrics": metrics, "config": str(cfg_path)}

    def check(marker: dict[str, Any]) -> str | None:
        last = ctx.last_ckpt(spec.key)
        try:
            epoch, step = _ckpt_position(last)
        except Exception as err:  # corrupt file: retrain
            return f"{last} is unreadable ({type(err).__name__})"
        if epoch != marker.get("epoch") or step != marker.get("global_step"):
            return (f"{last} holds epoch {epoch}/step {step}, the finished run recorded "
                    f"epoch {marker.get('epoch')}/step {marker.get('global_step')}")
        if epoch != max_epochs - 1:
            return f"{last} is at epoch {epoch}, expected {max_epochs - 1} (max_epochs {max_epochs})"
        return None

    est = (5.0 if ctx.settings.zoo and spec.zoo is not None
           else _train_units(spec, ctx.settings, cfg) * ctx.step_seconds + 20.0)
    return Stage(f"train/{spec.key}", f"train {spec.label} ({spec.config})", est,
                 [ctx.last_ckpt(spec.key)], run_it, check=check)


# -- evaluation -----------------------------------------------------------------------------------
def _pgd_overrides(name: str, settings: Settings) -> dict[str, Any]:
    """``{"steps": k}`` for PGD-type names when the settings shorten PGD (``--quick``)."""
    if settings.pgd_steps is None or name.startswith("fgsm"):
        return {}
    return {"steps": settings.pgd_steps}


def attack_suite(spec: ModelSpec, settings: Settings,
                 ref_model: torch.nn.Module | None) -> dict[str, Any]:
    """The attacks run on ``spec``'s network, keyed as in :data:`ATTACK_ROWS`.

    ``ref_model`` (the float REF) is the source of the transfer attack; ``None`` leaves the
    transfer attack out (REF itself). "PGD with R restarts" is a :class:`Cascade` of R
    independent random-start PGD runs: a sample is robust only if every run failed (the
    per-sample worst case of ``PGD(restarts=R)``), and each run only attacks the samples
    still robust, so it costs far less than R full runs.
    """
    from bnnrobust.attacks.cascade import Cascade
    from bnnrobust.attacks.factory import build_attack
    from bnnrobust.attacks.presets import strongest_cascade
    from bnnrobust.attacks.transfer import TransferAttack

    ds = settings.dataset
    s, q = settings.apgd_steps, settings.square_queries

    def named(name: str) -> Any:
        return build_attack(name, dataset=ds, **_pgd_overrides(name, settings))

    attacks: dict[str, Any] = {name: named(name) for name in _NAMED_ATTACKS}
    attacks["apgd-ce"] = build_attack({"name": "apgd-ce", "steps": s, "seed": settings.seed}, ds)
    attacks["apgd-dlr"] = build_attack({"name": "apgd-dlr", "steps": s, "seed": settings.seed}, ds)
    if spec.key in settings.peer_check_models:
        attacks["apgd-t"] = build_attack({"name": "apgd-t", "steps": s, "seed": settings.seed}, ds)
    attacks["square"] = build_attack({"name": "square", "n_queries": q, "seed": settings.seed}, ds)
    if ref_model is not None:
        attacks["transfer_pgd"] = TransferAttack(ref_model, named("pgd"))
    attacks["pgd_restarts"] = Cascade([named("pgd")
                                       for _ in range(settings.restarts)],
                                      name=f"pgd-{settings.restarts}restarts")
    attacks["strongest"] = strongest_cascade(ds, steps=s, n_queries=q, seed=settings.seed)
    return attacks


def _eval_units(spec: ModelSpec, settings: Settings) -> float:
    """Generous image-steps of one model's evaluation (assumed robust fractions).

    Checked against a pilot (n = 200, one thread): REF 32 s, BNN-WQ 25 s and REF* 149 s of
    CPU time, against 86 s, 213 s and 208 s estimated at 0.68 ms per image-step.
    """
    # r: fraction of the attacked samples that survive a plain PGD at eps 0.1 (pilot: REF 0,
    # BNN-WQ 0, REF* 0.8); attacks that stop on fooled samples cost in proportion to it
    r = 0.8 if spec.adversarial else (0.02 if spec.family == "ref" else 0.1)
    s, q, t = settings.apgd_steps, settings.square_queries, settings.pgd_steps or 20
    hns = 12.0                            # HNS: one Jacobian (d backward passes) per sample
    per = 3 + 2 * hns                     # fgsm, ++njs, ++hns
    per += 2 * (3 * t + hns)              # pgd L∞/L2 and ++
    per += t                              # pgd with the DLR loss
    per += 2 * s * (0.2 + 0.8 * r)        # apgd-ce, apgd-dlr (stop on fooled samples)
    per += 0.35 * q * (0.06 + r)          # square: forwards until fooled
    per += t + (settings.restarts - 1) * t * r   # restarts cascade
    per += s + hns + r * (11 * s + 0.35 * q + (s if spec.family == "waq" else 0))  # strongest
    if spec.key in settings.peer_check_models:
        per += s + 8 * s * r              # apgd-t alone (next target only while robust)
    if spec.key != REF_KEY:
        per += t                          # transfer (PGD on REF)
    return per * settings.n_eval * 0.85  # attacked: the clean-correct samples


def _eval_stage(ctx: Context, spec: ModelSpec) -> Stage:
    out = ctx.eval_json(spec.key)

    def run_it() -> dict[str, Any]:
        from bnnrobust.evaluation.report import format_table, write_reports
        from bnnrobust.evaluation.runner import evaluate

        s = ctx.settings
        model = ctx.model(spec.key)
        ref = ctx.model(REF_KEY) if spec.key != REF_KEY else None
        attacks = attack_suite(spec, s, ref)
        x, y = ctx.test_data(spec.key, s.n_eval)
        _log(f"  {len(attacks)} attacks on {x.shape[0]} test images: {', '.join(attacks)}")
        result = evaluate(model, (x, y), attacks, seed=s.seed, device="cpu",
                          progress=ctx.progress, batch_size=s.batch_size)
        train_marker = ctx.marker(f"train/{spec.key}")
        train_info = _read_json(train_marker).get("result", {}) if train_marker.is_file() else {}
        title = f"{spec.label} — Fashion-MNIST reproduction ({s.profile})"
        write_reports(result, out, title=title, model=spec.key, label=spec.label,
                      family=spec.family, adversarial=spec.adversarial,
                      checkpoint=str(ctx.last_ckpt(spec.key)), dataset=s.dataset,
                      training=train_info)
        _log(format_table(result, title))
        return {"clean_acc": result.clean_acc, "seconds": result.seconds}

    deps = [f"train/{spec.key}"] + ([f"train/{REF_KEY}"] if spec.key != REF_KEY else [])
    est = _eval_units(spec, ctx.settings) * ctx.step_seconds + 10.0
    return Stage(f"eval/{spec.key}", f"evaluate {spec.label}: {len(ATTACK_ROWS)} attack rows",
                 est, [out, out.with_suffix(".md")], run_it, deps)


# -- signal propagation and eps sweeps ------------------------------------------------------------
def _signal_stage(ctx: Context) -> Stage:
    out = ctx.out / "signal_propagation.json"

    def run_it() -> dict[str, Any]:
        from bnnrobust.metrics.signal import format_table, signal_propagation

        body: dict[str, Any] = {"n": ctx.settings.signal_n, "models": {}}
        md: list[str] = []
        for spec in MODELS:
            x, y = ctx.test_data(spec.key, ctx.settings.signal_n)
            stats = signal_propagation(ctx.model(spec.key), x, y)
            body["models"][spec.key] = {"label": spec.label, **stats.to_dict()}
            md.append(f"### {spec.label}\n\n{format_table(stats)}\n")
            zero = stats.summary("original")["zero_grad_frac"]
            _log(f"  {spec.label}: zero-gradient fraction at β=1 {zero:.3f}")
        _write_json(out, body)
        out.with_suffix(".md").write_text("\n".join(md))
        return {"models": len(MODELS)}

    est = len(MODELS) * ctx.settings.signal_n * 45 * ctx.step_seconds + 10.0
    return Stage("signal", f"signal propagation (paper Table 12) of all {len(MODELS)} networks", est,
                 [out, out.with_suffix(".md")], run_it, [f"train/{m.key}" for m in MODELS])


def _clever_stage(ctx: Context) -> Stage:
    """Paper Table 10: ART's CLEVER (L1, 50 × 10, radius 5) under the four temperatures."""
    out = ctx.out / "clever.json"
    s = ctx.settings

    def run_it() -> dict[str, Any]:
        from bnnrobust.metrics.clever import clever_table

        body: dict[str, Any] = {"n": s.clever_n, "models": {}}
        for key in s.clever_models:
            x, y = ctx.test_data(key, s.clever_n)
            table = clever_table(ctx.model(key), x, y, progress=ctx.progress,
                                 nb_batches=s.clever_batches, batch_size=s.clever_batch_size,
                                 radius=s.clever_radius, norm=1, seed=s.seed)
            body["models"][key] = {"label": _BY_KEY[key].label, **table}
            _log(f"  {_BY_KEY[key].label}: mean CLEVER " + ", ".join(
                f"{n} {v['mean']:.4f}" for n, v in table["summary"].items()))
        _write_json(out, body)
        return {"models": len(s.clever_models)}

    # per image and variant: (d − 1) targets × nb_batches backward passes of batch_size images
    est = (len(s.clever_models) * s.clever_n * 4 * 9 * s.clever_batches * s.clever_batch_size
           * 1.5 * ctx.step_seconds + 10.0)
    return Stage("clever", "CLEVER under temperature (paper Table 10)", est, [out], run_it,
                 [f"train/{k}" for k in s.clever_models])


#: the paper's Table 10 (mean CLEVER score, L1, CIFAR-10 ResNet-18)
PAPER_CLEVER: dict[str, dict[str, float]] = {
    "wq_md_tanh_s": {"original": 0.8585, "heuristic": 0.8845, "njs": 0.4139, "hns": 0.3450},
    "waq_hubara": {"original": 0.7239, "heuristic": 3.1578, "njs": 0.3120, "hns": 0.2774},
}


def clever_findings(clever: Mapping[str, Any] | None) -> list[Finding]:
    """Table 10: do NJS/HNS lower the CLEVER estimate, and β = 0.01 not?"""
    out: list[Finding] = []
    for key, body in ((clever or {}).get("models") or {}).items():
        m = {k: v["mean"] for k, v in body["summary"].items()}
        p = PAPER_CLEVER.get(key, {})
        if not all(math.isfinite(m.get(k, float("nan"))) for k in ("original", "njs", "hns")):
            continue
        best = min(m["njs"], m["hns"])
        rel = (m["original"] - best) / m["original"] if m["original"] else 0.0
        out.append(Finding(
            "Table 10", f"NJS/HNS lower the CLEVER score of {body['label']} (a tighter bound)",
            f"original {m['original']:.4f} → NJS {m['njs']:.4f}, HNS {m['hns']:.4f} "
            f"({100 * rel:+.1f} %)",
            f"{p.get('original', float('nan')):.4f} → {p.get('njs', float('nan')):.4f}, "
            f"{p.get('hns', float('nan')):.4f}" if p else "n/a",
            "agrees" if rel >= 0.1 else "partly agrees" if rel > 0.01 else "differs"))
    return out


def _clever_table(clever: Mapping[str, Any]) -> list[str]:
    rows = ["| network | scored images | original (β = 1) | heuristic (β = 0.01) | NJS | HNS |"
            " paper: original / heuristic / NJS / HNS |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, body in clever.get("models", {}).items():
        m = body["summary"]
        p = PAPER_CLEVER.get(key)
        paper = " / ".join(f"{p[k]:.4f}" for k in ("original", "heuristic", "njs", "hns")) \
            if p else "n/a"
        rows.append(f"| {body['label']} | {body['n_scored']} | " + " | ".join(
            f"{m[k]['mean']:.4f}" for k in ("original", "heuristic", "njs", "hns")) + f" | {paper} |")
    return rows


def _sweep_stage(ctx: Context, spec: ModelSpec) -> Stage:
    js = ctx.sweep_json(spec.key)

    def run_it() -> dict[str, Any]:
        from bnnrobust.evaluation.sweep import eps_sweep

        s = ctx.settings
        x, y = ctx.test_data(spec.key, s.sweep_n)
        specs = [{"name": a, **_pgd_overrides(a, s)} for a in SWEEP_ATTACKS]
        res = eps_sweep(ctx.model(spec.key), x, y, specs, list(s.sweep_eps),
                        dataset=s.dataset, seed=s.seed, batch_size=s.batch_size, device="cpu",
                        json_path=js, png_path=js.with_suffix(".png"), progress=ctx.progress)
        return {"non_monotone": res["non_monotone"]}

    s = ctx.settings
    n_eps = sum(1 for e in s.sweep_eps if e > 0)
    t = s.pgd_steps or 20
    est = s.sweep_n * 0.9 * (1 + 3 * t + 12) * n_eps * ctx.step_seconds + 10.0
    return Stage(f"sweep/{spec.key}", f"accuracy vs eps of {spec.label} (Fig. 1b)", est,
                 [js, js.with_suffix(".png")], run_it, [f"train/{spec.key}"])


# -- Tables 11 and 13: PGD++ with varying rho ------------------------------------------------------
#: (temperature, rho values, networks) of the paper's two rho ablations
RHO_ABLATIONS: dict[str, tuple[tuple[float, ...], tuple[str, ...]]] = {
    "njs": ((1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.2), (REF_KEY, WQ_KEY, WAQ_KEY)),            # Table 11
    "prop1": ((1e-15, 1e-9, 1e-5, 0.1, 0.2, 0.5),
              (REF_KEY, WQ_KEY, "adv_ref", "adv_wq_md_tanh_s")),                         # Table 13
}
#: the paper's Tables 11 and 13 (CIFAR-10 ResNet-18), percent, in RHO_ABLATIONS' rho order
PAPER_RHO: dict[str, dict[str, tuple[float, ...]]] = {
    "njs": {"ref": (0.0,) * 6, "wq_md_tanh_s": (0.0,) * 6,
            "waq_hubara": (0.15, 0.08, 0.04, 0.03, 0.04, 0.02)},
    "prop1": {"ref": (0.0,) * 6, "wq_md_tanh_s": (9.61, 0.04, 0.0, 0.0, 0.0, 0.0),
              "adv_ref": (48.18, 47.66, 48.00, 53.09, 54.58, 57.57),
              "adv_wq_md_tanh_s": (40.66, 40.01, 40.04, 45.09, 46.57, 49.72)},
}


def _rho_key(rule: str, rho: float) -> str:
    return f"{rule}_rho{rho:g}"


def _rho_stage(ctx: Context) -> Stage:
    out = ctx.out / "rho_ablation.json"

    def run_it() -> dict[str, Any]:
        from bnnrobust.attacks.factory import build_attack
        from bnnrobust.evaluation.runner import evaluate

        st = ctx.settings
        body: dict[str, Any] = {"n": st.rho_n, "rho": {}, "models": {}}
        for rule, (rhos, keys) in RHO_ABLATIONS.items():
            body["rho"][rule] = list(rhos)
            for key in keys:
                x, y = ctx.test_data(key, st.rho_n)
                attacks = {_rho_key(rule, r): build_attack(
                    {"name": "pgd", "temperature": {"name": rule, "rho": r},
                     **_pgd_overrides("pgd", st)}, st.dataset) for r in rhos}
                res = evaluate(ctx.model(key), (x, y), attacks, seed=st.seed, device="cpu",
                               progress=ctx.progress, batch_size=st.batch_size)
                entry = body["models"].setdefault(key, {"label": _BY_KEY[key].label,
                                                        "clean_acc": res.clean_acc})
                entry[rule] = [res.attacks[_rho_key(rule, r)].adv_acc for r in rhos]
                _log(f"  {_BY_KEY[key].label}, PGD++ {rule} over rho: "
                     + ", ".join(f"{a:.2f}" for a in entry[rule]))
        _write_json(out, body)
        return {"models": len(body["models"])}

    st = ctx.settings
    t = st.pgd_steps or 20
    n_runs = sum(len(r) * len(k) for r, k in RHO_ABLATIONS.values())
    est = n_runs * st.rho_n * 0.9 * (t + 1) * ctx.step_seconds + 10.0
    keys = sorted({k for _, ks in RHO_ABLATIONS.values() for k in ks})
    return Stage("rho", "PGD++ with varying rho: NJS (Table 11), Proposition 1 (Table 13)", est,
                 [out], run_it, [f"train/{k}" for k in keys])


def rho_findings(rho: Mapping[str, Any] | None) -> list[Finding]:
    """Tables 11 and 13, from ``rho_ablation.json``'s body."""
    out: list[Finding] = []
    if not rho:
        return out
    models = rho.get("models", {})
    for key in RHO_ABLATIONS["njs"][1]:
        vals = (models.get(key) or {}).get("njs")
        if not vals:
            continue
        spread = max(vals) - min(vals)
        pap = PAPER_RHO["njs"][key]
        out.append(Finding("Table 11", f"PGD++ (NJS) on {_BY_KEY[key].label} is stable in ρ "
                           "(1e-5 … 0.2)", f"{min(vals):.2f} … {max(vals):.2f} (spread "
                           f"{spread:.2f})", f"{min(pap):.2f} … {max(pap):.2f}",
                           "agrees" if spread <= CLEAR_POINTS else "partly agrees"
                           if spread <= 2 * CLEAR_POINTS else "differs"))
    rhos = list(rho.get("rho", {}).get("prop1", []))
    for key in RHO_ABLATIONS["prop1"][1]:
        vals = (models.get(key) or {}).get("prop1")
        if not vals or len(vals) != len(rhos):
            continue
        pap = PAPER_RHO["prop1"][key]
        if _BY_KEY[key].adversarial:
            rise = vals[-1] - min(vals)
            claim = (f"On {_BY_KEY[key].label}, Prop. 1's β works best at a small ρ: "
                     f"ρ = {rhos[-1]:g} is weaker than the best ρ")
            pap_text = (f"best {min(pap):.2f}, ρ = 0.5: {pap[-1]:.2f} "
                        f"({pap[-1] - min(pap):+.2f})")
            if max(vals) <= FLOOR_POINTS:
                out.append(Finding("Table 13", claim, f"{max(vals):.2f} or less at every ρ: the "
                                   "network is not robust at this eps, nothing to compare",
                                   pap_text, "not testable"))
                continue
            out.append(Finding("Table 13", claim,
                               f"best {min(vals):.2f} (ρ = {rhos[vals.index(min(vals))]:g}), "
                               f"ρ = {rhos[-1]:g}: {vals[-1]:.2f} ({rise:+.2f})", pap_text,
                               "agrees" if rise >= CLEAR_POINTS else "partly agrees" if rise > 0
                               else "differs"))
        else:
            worst = max(vals[1:])
            out.append(Finding("Table 13", f"On {_BY_KEY[key].label}, Prop. 1's β with ρ ≥ "
                               f"{rhos[1]:g} drives accuracy to about 0",
                               f"{', '.join(f'{v:.2f}' for v in vals)} (ρ = "
                               f"{', '.join(f'{r:g}' for r in rhos)})",
                               ", ".join(f"{v:.2f}" for v in pap),
                               "agrees" if worst <= FLOOR_POINTS else "partly agrees"
                               if worst <= CLEAR_POINTS else "differs"))
    return out


def _rho_tables(rho: Mapping[str, Any]) -> list[str]:
    md: list[str] = []
    names = {"njs": "PGD++ (NJS) with varying ρ — paper Table 11",
             "prop1": "PGD++ with β from Proposition 1 and varying ρ — paper Table 13"}
    for rule, rhos in rho.get("rho", {}).items():
        md.append(f"**{names.get(rule, rule)}** (adversarial accuracy %, ours / paper):")
        md.append("")
        md.append("| network | clean | " + " | ".join(f"ρ = {r:g}" for r in rhos) + " |")
        md.append("|---|---:|" + "---:|" * len(rhos))
        for key, entry in rho.get("models", {}).items():
            if rule not in entry:
                continue
            pap = PAPER_RHO.get(rule, {}).get(key)
            cells = [f"{v:.2f} / {pap[i]:.2f}" if pap else f"{v:.2f}"
                     for i, v in enumerate(entry[rule])]
            md.append(f"| {entry['label']} | {entry['clean_acc']:.2f} | " + " | ".join(cells)
                      + " |")
        md.append("")
    return md


# -- the peer check: strongest <= every peer ---------------------------------------------------
def peer_check(evals: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """For each model: is the ``strongest`` accuracy <= that of every peer attack alone?

    Args:
        evals: ``{model key: eval JSON body}``.
        models: the model keys to check (BNN-WQ and BNN-WAQ).

    Returns:
        ``{"models": {key: {"strongest": acc, "peers": {peer: {"adv_acc": acc, "ok": bool,
        "margin": peer - strongest}}, "ok": bool}}, "ok": bool}`` (accuracies in percent;
        a missing number gives ``ok: None`` and ``"missing": [...]``).
    """
    out: dict[str, Any] = {"peers": list(PEERS), "models": {}}
    all_ok: bool | None = True
    for key in models:
        attacks = (evals.get(key) or {}).get("attacks", {})
        strongest = attacks.get("strongest", {}).get("adv_acc")
        entry: dict[str, Any] = {"strongest": strongest, "peers": {}, "missing": []}
        ok: bool | None = strongest is not None
        if strongest is None:
            entry["missing"].append("strongest")
        for peer in PEERS:
            acc = attacks.get(peer, {}).get("adv_acc")
            if acc is None or strongest is None:
                entry["peers"][peer] = {"adv_acc": acc, "ok": None, "margin": None}
                if acc is None:
                    entry["missing"].append(peer)
                ok = None if ok is not False else ok
                continue
            good = strongest <= acc + 1e-9
            entry["peers"][peer] = {"adv_acc": acc, "ok": good, "margin": acc - strongest}
            if not good:
                ok = False
        entry["ok"] = ok
        out["models"][key] = entry
        if ok is False:
            all_ok = False
        elif ok is None and all_ok:
            all_ok = None
    out["ok"] = all_ok
    return out


def _peer_stage(ctx: Context) -> Stage:
    out = ctx.out / "peer_check.json"

    def run_it() -> dict[str, Any]:
        keys = ctx.settings.peer_check_models
        evals = {k: _read_json(ctx.eval_json(k)) for k in keys}
        res = peer_check(evals, keys)
        _write_json(out, res)
        for key, entry in res["models"].items():
            peers = ", ".join(f"{p} {v['adv_acc']:.2f}" for p, v in entry["peers"].items()
                              if v["adv_acc"] is not None)
            _log(f"  {_BY_KEY[key].label}: strongest {entry['strongest']:.2f} % vs {peers} "
                 f"-> {'OK' if entry['ok'] else 'VIOLATED' if entry['ok'] is False else 'incomplete'}")
        return {"ok": res["ok"]}

    return Stage("peer_check", "peer check: strongest <= every peer (BNN-WQ, BNN-WAQ)", 2.0, [out],
                 run_it, [f"eval/{k}" for k in ctx.settings.peer_check_models])


# -- report ---------------------------------------------------------------------------------------
#: The paper's numbers for CIFAR-10 ResNet-18 (Tables 1, 3, 5, 7), percent; None = not reported.
PAPER: dict[str, dict[str, float | None]] = {
    "ref": {"clean": 94.46, "fgsm": 7.62, "fgsm++njs": 5.55, "fgsm++hns": 5.35, "pgd": 0.00,
            "pgd++njs": 0.00, "pgd++hns": 0.00, "pgd_l2": 45.18, "pgd_l2++njs": 0.09,
            "pgd_l2++hns": 0.05, "pgd_dlr": 0.00, "apgd-dlr": 0.00, "square": 0.55,
            "pgd_restarts": 0.00},
    "wq_md_tanh_s": {"clean": 93.18, "fgsm": 40.49, "fgsm++njs": 3.46, "fgsm++hns": 2.51,
                     "pgd": 26.98, "pgd++njs": 0.00, "pgd++hns": 0.00, "pgd_dlr": 0.00,
                     "apgd-dlr": 0.00, "square": 0.41, "pgd_restarts": 17.91},
    "waq_hubara": {"clean": 87.67, "fgsm": 40.84, "fgsm++njs": 19.46, "fgsm++hns": 19.09,
                   "pgd": 8.57, "pgd++njs": 0.03, "pgd++hns": 0.04, "pgd_l2": 67.84,
                   "pgd_l2++njs": 2.33, "pgd_l2++hns": 2.59, "pgd_dlr": 4.57, "apgd-dlr": 6.32,
                   "square": 21.45, "pgd_restarts": 1.94},
    "adv_ref": {"fgsm": 62.38, "fgsm++njs": 61.43, "fgsm++hns": 61.40, "pgd": 48.73,
                "pgd++njs": 47.17, "pgd++hns": 48.54, "pgd_dlr": 49.73},
    "adv_wq_md_tanh_s": {"fgsm": 55.10, "fgsm++njs": 54.74, "fgsm++hns": 53.82, "pgd": 41.34,
                         "pgd++njs": 40.76, "pgd++hns": 40.67, "pgd_dlr": 41.42},
}

#: a difference smaller than this (percentage points) is "about equal" in the findings
CLEAR_POINTS = 2.0
#: a plain attack at or below this accuracy (percent) leaves nothing for a stronger one to show
FLOOR_POINTS = 1.0
#: the verdicts of :class:`Finding`
VERDICTS = ("agrees", "partly agrees", "differs", "not testable", "not measured")


def _acc(evals: Mapping[str, Any], model: str, attack: str) -> float | None:
    body = evals.get(model)
    if not body:
        return None
    if attack == "clean":
        return float(body["clean_acc"])
    res = body.get("attacks", {}).get(attack)
    return None if res is None else float(res["adv_acc"])


def _pp(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


@dataclass
class Finding:
    """One comparison with the paper: a claim, our numbers, the paper's, and a verdict."""

    topic: str
    claim: str
    ours: str
    paper: str
    verdict: str  # one of VERDICTS


def _drop_finding(evals: Mapping[str, Any], model: str, base: str, pluses: Sequence[str],
                  topic: str, claim: str) -> Finding:
    b = _acc(evals, model, base)
    vals = [v for v in (_acc(evals, model, p) for p in pluses) if v is not None]
    pb = PAPER.get(model, {})
    pvals = [v for v in (pb.get(p) for p in pluses) if v is not None]
    paper = (f"{_pp(pb.get(base))} → {_pp(min(pvals))}" if pb.get(base) is not None and pvals
             else "n/a")
    if b is None or not vals:
        return Finding(topic, claim, "not measured", paper, "not measured")
    best = min(vals)
    if b <= FLOOR_POINTS:
        return Finding(topic, claim, f"{b:.2f} → {best:.2f}: the plain attack already reaches "
                       f"≤ {FLOOR_POINTS:g} % at this eps (see the sweep rows at smaller eps and "
                       "docs/masking_study.md)", paper, "not testable")
    drop = b - best
    ours = f"{b:.2f} → {best:.2f} ({drop:+.2f} points lower)" if drop >= 0 else \
        f"{b:.2f} → {best:.2f} ({-drop:.2f} points higher)"
    if drop >= CLEAR_POINTS:
        verdict = "agrees"
    elif drop > 0:
        verdict = "partly agrees"
    else:
        verdict = "differs"
    return Finding(topic, claim, ours, paper, verdict)


def findings(evals: Mapping[str, Any], signal: Mapping[str, Any] | None,
             sweeps: Mapping[str, Any], peers: Mapping[str, Any] | None) -> list[Finding]:
    """Every comparison with the paper, computed from the numbers (see ``docs/results.md``)."""
    out: list[Finding] = []
    ref, wq, waq = REF_KEY, WQ_KEY, WAQ_KEY
    labels = {m.key: m.label for m in MODELS}

    # Table 1: BNNs look more robust than REF under plain PGD (one row per BNN)
    r = _acc(evals, ref, "pgd")
    for key in (wq, "wq_bc", WQ_HIDDEN_KEY, waq):
        q = _acc(evals, key, "pgd")
        if r is None or q is None:
            continue
        paper_q = PAPER.get(key, {}).get("pgd")
        out.append(Finding("Table 1", f"{labels[key]} looks more robust than REF under plain PGD L∞",
                           f"PGD acc. REF {r:.2f}, {labels[key]} {q:.2f}",
                           f"REF {_pp(PAPER[ref].get('pgd'))}, {_pp(paper_q)}"
                           if paper_q is not None else "n/a",
                           "agrees" if q > r + CLEAR_POINTS else "partly agrees" if q > r
                           else "differs"))
    # Tables 2/3/5: PGD++ / FGSM++ beat PGD / FGSM on BNNs
    for key in (wq, "wq_bc", WQ_HIDDEN_KEY, waq):
        out.append(_drop_finding(evals, key, "pgd", ("pgd++njs", "pgd++hns"), "Tables 2, 3, 5",
                                 f"PGD++ L∞ lowers {labels[key]} accuracy a lot vs PGD "
                                 "(fake robustness from vanishing gradients)"))
        out.append(_drop_finding(evals, key, "fgsm", ("fgsm++njs", "fgsm++hns"), "Tables 2, 3, 5",
                                 f"FGSM++ lowers {labels[key]} accuracy vs FGSM"))
        out.append(_drop_finding(evals, key, "pgd_l2", ("pgd_l2++njs", "pgd_l2++hns"),
                                 "Tables 2, 3", f"PGD++ L2 lowers {labels[key]} accuracy vs PGD L2"))
    # REF: PGD++ at least as strong as PGD (both ~0 in the paper)
    b, p1, p2 = (_acc(evals, ref, k) for k in ("pgd", "pgd++njs", "pgd++hns"))
    if None not in (b, p1, p2):
        best = min(p1, p2)  # type: ignore[type-var]
        out.append(Finding("Table 3", "On REF, PGD++ is at least as strong as PGD",
                           f"PGD {b:.2f}, PGD++ {best:.2f}", "0.00 and 0.00",
                           "agrees" if best <= b + 0.5 else  # type: ignore[operator]
                           "partly agrees" if best <= b + CLEAR_POINTS else "differs"))  # type: ignore[operator]
    # Table 1: 20 restarts do not close the gap on BNNs
    for key in (wq, waq):
        rr = _acc(evals, key, "pgd_restarts")
        pp = [v for v in (_acc(evals, key, "pgd++njs"), _acc(evals, key, "pgd++hns")) if v is not None]
        if rr is not None and pp:
            gap = rr - min(pp)
            out.append(Finding("Table 1", f"PGD with restarts stays above PGD++ on {labels[key]}",
                               f"restarts {rr:.2f} vs PGD++ {min(pp):.2f} ({gap:+.2f})",
                               f"{_pp(PAPER[key].get('pgd_restarts'))} vs {_pp(min(PAPER[key]['pgd++njs'] or 0, PAPER[key]['pgd++hns'] or 0))}",
                               "agrees" if gap >= CLEAR_POINTS else "partly agrees" if gap > 0
                               else "differs"))
    # Fig. 1c: black-box transfer from REF beats white-box PGD on BNNs (gradient masking)
    for key in (wq, waq):
        tr, pg = _acc(evals, key, "transfer_pgd"), _acc(evals, key, "pgd")
        if tr is not None and pg is not None:
            out.append(Finding("Fig. 1c", f"Transfer PGD from REF beats white-box PGD on {labels[key]}",
                               f"transfer {tr:.2f} vs white-box {pg:.2f}",
                               "black-box below white-box (plot)",
                               "agrees" if tr < pg - 0.5 else "partly agrees" if tr <= pg + 0.5
                               else "differs"))
    # Table 5: PGD++ at least as strong as PGD with the DLR loss
    for key in (wq, waq, "adv_ref", "adv_wq_md_tanh_s"):
        dl = _acc(evals, key, "pgd_dlr")
        pp = [v for v in (_acc(evals, key, "pgd++njs"), _acc(evals, key, "pgd++hns")) if v is not None]
        if dl is not None and pp:
            pdl, ppp = PAPER[key].get("pgd_dlr"), [PAPER[key].get("pgd++njs"), PAPER[key].get("pgd++hns")]
            pap = f"DLR {_pp(pdl)} vs PGD++ {_pp(min(v for v in ppp if v is not None))}" if pdl is not None else "n/a"
            out.append(Finding("Table 5", f"PGD++ is at least as strong as PGD-DLR on {labels[key]}",
                               f"DLR {dl:.2f} vs PGD++ {min(pp):.2f}", pap,
                               "agrees" if min(pp) <= dl + 0.5 else "partly agrees"
                               if min(pp) <= dl + CLEAR_POINTS else "differs"))
    # Tables 4/5: adversarially trained networks: PGD++ slightly stronger than PGD
    for key in ("adv_ref", "adv_wq_md_tanh_s"):
        b = _acc(evals, key, "pgd")
        pp = [v for v in (_acc(evals, key, "pgd++njs"), _acc(evals, key, "pgd++hns")) if v is not None]
        if b is not None and pp:
            d = b - min(pp)
            pb = PAPER[key]
            out.append(Finding("Table 4", f"On {labels[key]}, PGD++ is slightly stronger than PGD "
                               "(small gain: no vanishing gradients after adversarial training)",
                               f"PGD {b:.2f} → PGD++ {min(pp):.2f} ({d:+.2f})",
                               f"{_pp(pb['pgd'])} → {_pp(min(pb['pgd++njs'] or 0, pb['pgd++hns'] or 0))}",
                               "agrees" if 0 < d < 2 * CLEAR_POINTS else "partly agrees"
                               if d > -0.5 else "differs"))
    # Table 7: PGD++ vs APGD-DLR and Square on BNNs
    for key in (wq, waq):
        pp = [v for v in (_acc(evals, key, "pgd++njs"), _acc(evals, key, "pgd++hns")) if v is not None]
        ad, sq = _acc(evals, key, "apgd-dlr"), _acc(evals, key, "square")
        if pp and ad is not None and sq is not None:
            m = min(pp)
            out.append(Finding("Table 7", f"PGD++ is at least as strong as APGD-DLR and Square on {labels[key]}",
                               f"PGD++ {m:.2f}, APGD-DLR {ad:.2f}, Square {sq:.2f}",
                               f"PGD++ {_pp(min(PAPER[key]['pgd++njs'] or 0, PAPER[key]['pgd++hns'] or 0))}, "
                               f"APGD-DLR {_pp(PAPER[key].get('apgd-dlr'))}, Square {_pp(PAPER[key].get('square'))}",
                               "agrees" if m <= min(ad, sq) + 0.5 else "partly agrees"
                               if m <= max(ad, sq) else "differs"))
    # clean accuracy ordering (Table 1)
    c = [_acc(evals, k, "clean") for k in (ref, wq, waq)]
    if None not in c:
        ok = c[0] >= c[1] - 0.5 and c[1] >= c[2] - 0.5  # type: ignore[operator]
        out.append(Finding("Table 1", "Clean accuracy: REF ≥ BNN-WQ ≥ BNN-WAQ",
                           f"{c[0]:.2f} / {c[1]:.2f} / {c[2]:.2f}", "94.46 / 93.18 / 87.67",
                           "agrees" if ok else "differs"))
    # HNS vs NJS: paper says HNS wins more often, notably for FGSM
    wins = total = 0
    for spec in MODELS:
        for base in ("fgsm", "pgd", "pgd_l2"):
            n_, h_ = _acc(evals, spec.key, base + "++njs"), _acc(evals, spec.key, base + "++hns")
            if n_ is not None and h_ is not None and abs(n_ - h_) > 1e-9:
                total += 1
                wins += h_ < n_
    if total:
        out.append(Finding("§6.1", "HNS beats NJS in the majority of cases",
                           f"HNS lower in {wins} of {total} non-tied (model, attack) pairs",
                           "HNS better in the majority, notably FGSM",
                           "agrees" if wins > total / 2 else "partly agrees" if wins == total / 2
                           else "differs"))
    # Table 12: the error signal ψ grows with NJS/HNS; which gradients vanish
    if signal:
        for key in (wq, waq, ref):
            sm = (signal.get("models") or {}).get(key)
            if not sm:
                continue
            v = sm["variants"]
            psi = {name: v[name]["summary"]["psi_norm"] for name in v}
            zero = {name: v[name]["summary"]["zero_grad_frac"] for name in v}
            grew = all(psi[n] > psi["original"] for n in ("njs", "hns") if n in psi)
            finite = all(math.isfinite(x) for x in list(psi.values()) + list(zero.values()))
            verdict = ("not measured" if not finite else "agrees" if grew else "differs")
            out.append(Finding("Table 12", f"NJS/HNS enlarge the error signal ‖ψ‖₂ of {labels[key]}",
                               "‖ψ‖₂ " + ", ".join(f"{n} {psi[n]:.2e}" for n in psi)
                               + "; zero-gradient fraction " + ", ".join(f"{n} {zero[n]:.3f}" for n in zero),
                               {"wq_md_tanh_s": "6.20e-03 → 5.37e-01 (NJS) / 2.07e-01 (HNS)",
                                "waq_hubara": "9.46e-03 → 1.20e-01 / 2.44e-01",
                                "ref": "9.08e-03 → 4.66e-01 / 1.48e-01"}[key],
                               verdict))
    # Tables 2/3 at smaller radii: PGD vs PGD++ from the eps sweeps
    for key, sw in sweeps.items():
        curves = sw.get("attacks", {})
        if not {"pgd", "pgd++njs", "pgd++hns"} <= set(curves):
            continue
        for i, eps in enumerate(sw["eps"]):
            base = curves["pgd"]["adv_acc"][i]
            if eps <= 0 or base <= FLOOR_POINTS:
                continue
            best = min(curves["pgd++njs"]["adv_acc"][i], curves["pgd++hns"]["adv_acc"][i])
            d = base - best
            out.append(Finding("Tables 2, 3 (sweep)", f"PGD++ lowers {labels.get(key, key)} "
                               f"accuracy vs PGD at eps {eps:g} (sweep, {sw.get('n')} images)",
                               f"{base:.2f} → {best:.2f} ({d:+.2f})",
                               "large drop for BNNs, ≈ 0 for REF at 8/255",
                               "agrees" if (d >= CLEAR_POINTS if key != REF_KEY else d > -CLEAR_POINTS)
                               else "partly agrees" if d > 0 else "differs"))
            break  # the smallest informative radius
    # Fig. 1b: accuracy falls monotonically with eps (no masking signal from the radius)
    if sweeps:
        bad = {k: s.get("non_monotone", []) for k, s in sweeps.items()}
        flagged = {k: v for k, v in bad.items() if v}
        out.append(Finding("Fig. 1b", "Accuracy falls monotonically as eps grows",
                           "monotone for every curve" if not flagged else
                           "rises for " + "; ".join(f"{labels.get(k, k)}: {', '.join(v)}"
                                                   for k, v in flagged.items()),
                           "monotone (varying the radius shows no masking)",
                           "agrees" if not flagged else "differs"))
    if peers and peers.get("models"):
        pieces = []
        for key, e in peers["models"].items():
            pieces.append(f"{labels.get(key, key)}: strongest {_pp(e['strongest'])} vs min peer "
                          f"{_pp(min((p['adv_acc'] for p in e['peers'].values() if p['adv_acc'] is not None), default=None))}")
        out.append(Finding("peer check", "The strongest cascade is at most every peer attack alone",
                           "; ".join(pieces), "(not in the paper)",
                           "agrees" if peers.get("ok") else "differs" if peers.get("ok") is False
                           else "not measured"))
    return out


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())


def _attack_table(evals: Mapping[str, Any], settings: Settings) -> list[str]:
    present = [m for m in MODELS if m.key in evals]
    head = "| attack | " + " | ".join(m.label for m in present) + " |"
    lines = [head, "|---|" + "---:|" * len(present)]
    row = ["clean"] + [_pp(_acc(evals, m.key, "clean")) for m in present]
    lines.append("| " + " | ".join(row) + " |")
    for key, label in ATTACK_ROWS:
        name = label.format(S=settings.apgd_steps, Q=settings.square_queries, R=settings.restarts)
        cells = []
        for m in present:
            v = _acc(evals, m.key, key)
            cells.append("—" if v is None else f"{v:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _paper_table(evals: Mapping[str, Any]) -> list[str]:
    keys = [k for k in PAPER if k in evals]
    lines = ["| attack | " + " | ".join(f"{_BY_KEY[k].label}: ours / paper" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for key, label in (("clean", "clean"),) + ATTACK_ROWS:
        if not any(PAPER[k].get(key) is not None for k in keys):
            continue
        name = label.format(S="S", Q="Q", R="R")
        cells = [f"{_pp(_acc(evals, k, key))} / {_pp(PAPER[k].get(key))}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _signal_table(signal: Mapping[str, Any]) -> list[str]:
    """Table 12 as Markdown: one row per (network, β variant), one column per metric."""
    models = signal.get("models") or {}
    if not models:
        return []
    cols = (("jsv_mean", "JSV mean"), ("jsv_std", "JSV std"), ("psi_norm", "‖ψ‖₂"),
            ("grad_norm", "‖∂ℓ/∂x‖₂"), ("sign_grad_norm", "‖sign(∂ℓ/∂x)‖₂"),
            ("zero_grad_frac", "zero-grad. fraction"), ("beta", "β (mean)"))
    lines = ["| network | β | " + " | ".join(label for _, label in cols) + " | samples |",
             "|---|---|" + "---:|" * (len(cols) + 1)]
    for m in models.values():
        for variant, v in m["variants"].items():
            cells = []
            for key, _ in cols:
                val = v["summary"].get(key)
                cells.append("n/a" if val is None else f"{val:.3f}" if key == "zero_grad_frac"
                             else f"{val:.2e}")
            lines.append(f"| {m['label']} | {variant} | " + " | ".join(cells)
                         + f" | {m['n_correct']} |")
    return lines


def _vanishing_sentence(signal: Mapping[str, Any]) -> str:
    models = signal.get("models") or {}
    parts, none = [], []
    for m in models.values():
        v = m["variants"]
        z = v["original"]["summary"]["zero_grad_frac"]
        if not math.isfinite(z):
            parts.append(f"{m['label']}: not measured (no correctly classified sample, or "
                         "non-finite logits)")
        elif z > 0:
            after = ", ".join(f"{n.upper()} {v[n]['summary']['zero_grad_frac']:.1%}"
                              for n in ("njs", "hns") if n in v)
            parts.append(f"{m['label']}: {z:.1%} of the correctly classified samples have an input "
                         f"gradient that is exactly zero at β = 1 ({after})")
        else:
            none.append(m["label"])
    text = ""
    if parts:
        text += "Vanishing gradients (exactly zero input gradient, cross-entropy loss): " + \
            "; ".join(parts) + ". "
    if none:
        text += ("No sample has an exactly zero input gradient at β = 1 for " + ", ".join(none)
                 + " (their gradients may still be tiny: compare ‖∂ℓ/∂x‖₂ and ‖ψ‖₂ across β).")
    return text


def build_report(ctx: Context) -> tuple[str, dict[str, Any]]:
    """The Markdown of ``docs/results.md`` and the ``summary.json`` body, from ``<out>/*.json``."""
    s = ctx.settings
    out, md_dir = ctx.out, ctx.markdown.parent
    evals = {m.key: _read_json(ctx.eval_json(m.key)) for m in MODELS if ctx.eval_json(m.key).is_file()}
    sig_path = out / "signal_propagation.json"
    signal = _read_json(sig_path) if sig_path.is_file() else None
    sweeps = {k: _read_json(ctx.sweep_json(k)) for k in s.sweep_models if ctx.sweep_json(k).is_file()}
    peer_path = out / "peer_check.json"
    peers = _read_json(peer_path) if peer_path.is_file() else None
    rho_path = out / "rho_ablation.json"
    rho = _read_json(rho_path) if rho_path.is_file() else None
    clever_path = out / "clever.json"
    clever = _read_json(clever_path) if clever_path.is_file() else None
    found = findings(evals, signal, sweeps, peers) + rho_findings(rho) + clever_findings(clever)
    manifest = _read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    stage_times = manifest.get("stage_seconds", {})

    md: list[str] = []
    md.append("# Results: the paper's findings reproduced on Fashion-MNIST")
    md.append("")
    md.append("<!-- generated by `python -m bnnrobust.reproduce`; do not edit by hand -->")
    md.append("")
    md.append(_PROSE_HEADER)
    md.append("")
    md.append(_what_runs(ctx))
    md.append("")
    md.append(_budget_text(manifest))
    md.append("")
    md.append(f"Generated {_now()} into `{_rel(out, md_dir)}/` "
              f"({'quick toy-size run: the numbers mean nothing' if s.profile == 'quick' else 'full run'}"
              f"{', synthetic data' if s.synthetic else ''}). Total time "
              f"{_fmt_s(sum(stage_times.values()))} over {len(stage_times)} stages"
              f" (measured {1000 * manifest.get('step_seconds', 0):.2f} ms per image-step).")
    md.append("")
    md.append("## Adversarial accuracy (%)")
    md.append("")
    md.append(f"First {s.n_eval} test images; a sample counts as robust only if it is classified "
              f"correctly clean and after the attack. {_budget_line(evals)} "
              "`—`: not run on that network "
              "(the transfer attack needs a source other than the target; APGD-T alone only on the "
              "peer-check networks).")
    md.append("")
    md += _attack_table(evals, s)
    md.append("")
    md.append("Per-network reports (β statistics, seconds, budgets): " + ", ".join(
        f"[{_BY_KEY[k].label}]({_rel(ctx.eval_json(k).with_suffix('.md'), md_dir)})" for k in evals))
    md.append("")
    md.append("## Side by side with the paper (CIFAR-10 ResNet-18)")
    md.append("")
    md.append("Ours (Fashion-MNIST ConvNet, eps 0.1) / the paper (CIFAR-10 ResNet-18, eps 8/255; "
              "Tables 1, 3, 5 and 7; `n/a`: not reported). Datasets, networks and budgets differ, "
              "so compare directions and gaps, not values. S, Q, R as above.")
    md.append("")
    md += _paper_table(evals)
    md.append("")
    md.append("## Findings: where we agree with the paper and where we differ")
    md.append("")
    md.append(f"Computed from the numbers above (a gap under {CLEAR_POINTS:g} points counts as "
              "\"partly agrees\"; with 1,000 images one standard error of an accuracy near 50 % is "
              "about 1.6 points, less for paired differences on the same images).")
    md.append("")
    md.append("| source | claim | ours | paper | verdict |")
    md.append("|---|---|---|---|---|")
    for f in found:
        md.append(f"| {f.topic} | {f.claim} | {f.ours} | {f.paper} | **{f.verdict}** |")
    md.append("")
    counts = {v: sum(f.verdict == v for f in found) for v in VERDICTS}
    md.append("In short: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".")
    md.append("")
    if peers:
        md.append("## Peer check: is `strongest` at most every peer attack alone?")
        md.append("")
        md.append("| network | strongest | " + " | ".join(PEERS) + " | holds |")
        md.append("|---|---:|" + "---:|" * len(PEERS) + "---|")
        for key, e in peers["models"].items():
            cells = [_pp(e["peers"][p]["adv_acc"]) for p in PEERS]
            verdict = "yes" if e["ok"] else "**no**" if e["ok"] is False else "incomplete"
            md.append(f"| {_BY_KEY[key].label} | {_pp(e['strongest'])} | " + " | ".join(cells)
                      + f" | {verdict} |")
        md.append("")
        md.append(f"Same eps, APGD steps ({s.apgd_steps}) and Square queries ({s.square_queries}) "
                  "inside the cascade and alone. Measured, not assumed: the cascade's stages run "
                  "on different batches of still-robust samples, so this can fail. "
                  f"[JSON]({_rel(peer_path, md_dir)})")
        md.append("")
    if signal:
        md.append("## Signal propagation (paper Table 12)")
        md.append("")
        md.append(f"Over the correctly classified samples among the first {signal.get('n')} test "
                  "images, for β = 1 (original), the NJS β and the HNS β (per sample). "
                  f"[JSON]({_rel(sig_path, md_dir)})")
        md.append("")
        md += _signal_table(signal)
        md.append("")
        md.append(_vanishing_sentence(signal))
        md.append("")
    if rho:
        md.append("## PGD++ with varying ρ (paper Tables 11 and 13)")
        md.append("")
        md.append(f"First {rho.get('n')} test images, PGD L∞ at the Fashion-MNIST preset with the "
                  "temperature `{name: njs, rho: ρ}` (NJS's β1·β2) or `{name: prop1, rho: ρ}` "
                  "(Proposition 1's β = −log(ρ/((d−1)(1−ρ)))/γ, per sample and step). "
                  f"[JSON]({_rel(rho_path, md_dir)})")
        md.append("")
        md += _rho_tables(rho)
    if clever:
        md.append("## CLEVER under temperature (paper Table 10)")
        md.append("")
        md.append(f"Mean CLEVER score (ART's `clever_u`, L1 norm, {s.clever_batches} batches of "
                  f"{s.clever_batch_size}, radius {s.clever_radius:g}) of the correctly classified "
                  f"images among the first {clever.get('n')} test images, on the logits scaled by "
                  "β = 1, 0.01, NJS's β1 and each image's HNS β*. Scaling the logits scales the "
                  "margin and its gradients alike, so the estimate is β-invariant in exact "
                  "arithmetic; only the numerics can move it (bnnrobust.metrics.clever). "
                  f"[JSON]({_rel(clever_path, md_dir)})")
        md.append("")
        md += _clever_table(clever)
        md.append("")
    if sweeps:
        md.append("## Accuracy vs eps (Fig. 1b)")
        md.append("")
        combined = out / "sweep_pgd_vs_pgdpp.png"
        if combined.is_file():
            md.append(f"![PGD vs PGD++ across networks]({_rel(combined, md_dir)})")
            md.append("")
        for k, sw in sweeps.items():
            md.append(f"- {_BY_KEY[k].label}: [plot]({_rel(ctx.sweep_json(k).with_suffix('.png'), md_dir)}), "
                      f"[JSON]({_rel(ctx.sweep_json(k), md_dir)}); eps {sw['eps']}; "
                      + ("non-monotone: " + ", ".join(sw["non_monotone"]) if sw["non_monotone"]
                         else "every curve monotone"))
        md.append("")
    md.append("## Stage times")
    md.append("")
    md.append("| stage | seconds | estimate |")
    md.append("|---|---:|---:|")
    est = manifest.get("stage_estimates", {})
    for key, sec in stage_times.items():
        md.append(f"| {key} | {sec:.0f} | {est.get(key, float('nan')):.0f} |")
    md.append("")
    md.append(_PROSE_FOOTER.replace("{S}", str(s.apgd_steps)))
    summary = {"settings": s.to_dict(), "generated": _now(),
               "models": {m.key: {"label": m.label, "family": m.family,
                                  "adversarial": m.adversarial} for m in MODELS},
               "accuracy": {k: {"clean": v["clean_acc"],
                                **{a: r["adv_acc"] for a, r in v["attacks"].items()}}
                            for k, v in evals.items()},
               "findings": [asdict(f) for f in found], "verdicts": counts,
               "peer_check_ok": None if peers is None else peers.get("ok"),
               "paper": PAPER}
    return "\n".join(md) + "\n", summary


_PROSE_HEADER = """\
**How to regenerate** (offline, 2 CPU cores, under an hour; the command first prints its plan
with a generous estimate per stage, then progress lines with elapsed time and ETA):

```bash
python -m bnnrobust.reproduce --out results/fmnist            # writes results/fmnist/* and docs/results.md
python -m bnnrobust.reproduce --out results/fmnist --dry-run  # only print the plan and the estimates
python -m bnnrobust.reproduce --out results/fmnist --force    # discard the earlier run and redo it
python -m bnnrobust.reproduce --out /tmp/repro --quick        # the same pipeline at toy size (1-2 min)
```

A rerun after an interruption reuses every finished stage (checkpoints, evaluation JSONs);
delete one output (e.g. `results/fmnist/eval_ref.json`) and rerun to recompute just that part
and what depends on it. A folder holding a complete run is never overwritten without `--force`."""


def _what_runs(ctx: Context) -> str:
    """The "what runs" paragraph, from the training configs this run wrote and its settings."""
    s = ctx.settings
    parts = []
    for spec in MODELS:
        path = ctx.out / "configs" / f"{spec.key}.yaml"
        cfg = yaml.safe_load(path.read_text()) if path.is_file() else training_config(spec, s)
        data = cfg["data"].get("init_args", {})
        n = data.get("train_subset") or data.get("num_samples") or "all"
        net = cfg["model"]["init_args"]["model"]
        width = (net.get("init_args") or {}).get("width", 1.0)
        epochs = cfg.get("trainer", {}).get("max_epochs")
        extra = ""
        atk = cfg["model"]["init_args"].get("train_attack")
        if isinstance(atk, dict):
            extra = (f", adversarial training with PGD L∞ eps {atk.get('eps')}, "
                     f"{atk.get('steps')} steps of {atk.get('step_size')}")
        parts.append(f"{spec.label} (`{spec.config}`: ConvNet width {width}, "
                     f"{n} training images, {epochs} epoch{'s' if epochs != 1 else ''}{extra})")
    data_name = "synthetic data (SyntheticDataModule)" if s.synthetic else "Fashion-MNIST"
    zoo_note = (" The non-adversarial networks are the model zoo's checkpoints of these "
                "recipes (`--zoo`: trained by `train.py`, checksum and recipe checked)."
                if s.zoo else "")
    return (f"**What runs** ({s.profile} profile, {data_name}). {len(MODELS)} networks trained "
            "with `train.py`'s code path (`bnnrobust.training.main`): " + "; ".join(parts) + "."
            + zoo_note + " "
            f"Each is attacked on the first {s.n_eval} test images with FGSM, FGSM++ (NJS, HNS), "
            "PGD L∞/L2 and PGD++ (NJS, HNS), PGD with the DLR loss, APGD-CE and APGD-DLR "
            f"({s.apgd_steps} steps), Square ({s.square_queries} queries), PGD transferred "
            f"from REF, PGD with {s.restarts} restarts and the `strongest` cascade (its APGD "
            f"stages {s.apgd_steps} steps, Square {s.square_queries} queries); APGD-T alone "
            f"too on {', '.join(_BY_KEY[k].label for k in s.peer_check_models)} for the "
            f"peer check. Plus signal propagation on the first {s.signal_n} test images "
            f"(Table 12) and accuracy-vs-eps sweeps on {s.sweep_n} images (Fig. 1b).")


def _budget_text(manifest: Mapping[str, Any]) -> str:
    """Planned vs measured minutes per kind of stage (training, evaluation, ...)."""
    est = manifest.get("stage_estimates", {})
    real = manifest.get("stage_seconds", {})
    groups: dict[str, list[str]] = {}
    for key in est:
        groups.setdefault(key.split("/")[0], []).append(key)
    names = {"train": "training", "eval": "evaluation", "signal": "signal propagation",
             "sweep": "eps sweeps", "rho": "rho", "clever": "CLEVER", "peer_check": "peer check",
             "report": "report"}
    cells = []
    for g, keys in groups.items():
        e = sum(est[k] for k in keys)
        r = sum(real[k] for k in keys if k in real)
        done = all(k in real for k in keys)
        cells.append(f"{names.get(g, g)} {_fmt_s(e)} planned" +
                     (f", {_fmt_s(r)} measured" if done else ""))
    ms = 1000 * float(manifest.get("step_seconds") or 0.0)
    return (f"**Budget** (the plan's generous estimates at the measured {ms:.2f} ms per "
            "image-step, and the measured time of each kind of stage): " + "; ".join(cells) +
            f". Total planned {_fmt_s(sum(est.values()))}, measured "
            f"{_fmt_s(sum(real.values()))}. Expected for the full profile on an idle 2-core CPU "
            "(from a one-thread pilot on 200 test images, scaled to 1,000): training ≈ 7 min, "
            "evaluation ≈ 28–34 min (REF ≈ 3 min, each BNN 2–4 min, each adversarially "
            "trained network ≈ 10–12 min: its robust samples keep the restarts, Square and the "
            "cascade busy), signal propagation and sweeps ≈ 4–7 min — about 40–48 min in all "
            "on one thread, less with two.")


def _budget_line(evals: Mapping[str, Any]) -> str:
    """The attack budgets actually used, read from an evaluation JSON."""
    body = next(iter(evals.values()), None)
    if not body:
        return ""
    out = []
    for key, label in (("fgsm", "FGSM"), ("pgd", "PGD L∞"), ("pgd_l2", "PGD L2"),
                       ("apgd-ce", "APGD"), ("square", "Square")):
        cfg = body["attacks"].get(key, {}).get("config", {})
        if not cfg:
            continue
        text = f"{label} eps {cfg.get('eps'):g}"
        if key in ("pgd", "pgd_l2"):
            text += f" ({cfg.get('steps')} steps of {cfg.get('step_size'):g})"
        elif key == "apgd-ce":
            text += f" ({cfg.get('steps')} steps)"
        elif key == "square":
            text += f" ({cfg.get('n_queries')} queries)"
        out.append(text)
    return "Budgets (pixel units in [0, 1]): " + ", ".join(out) + "."


_PROSE_FOOTER = """\
## Caveats

* A CPU-sized stand-in: Fashion-MNIST, a 4-layer ConvNet (width 0.5), 1–2 epochs on subsets,
  eps 0.1 — not CIFAR-10/100 with ResNet-18 trained for 100k steps. Expect the *directions*
  of the paper's findings, not its values; the paper-scale configs are in `configs/paper/`.
* APGD uses fewer steps ({S} instead of 100) and Square fewer queries than AutoAttack's
  defaults, to fit the hour; the `strongest` numbers are therefore upper bounds that a full
  budget can only lower.
* "PGD with R restarts" is a cascade of R random-start PGD runs (per-sample worst case, as
  `PGD(restarts=R)`), each on the samples still robust."""


def _combined_sweep_plot(ctx: Context) -> Path | None:
    """PGD vs PGD++ (HNS) accuracy-vs-eps of every swept network in one PNG."""
    sweeps = {k: _read_json(ctx.sweep_json(k)) for k in ctx.settings.sweep_models
              if ctx.sweep_json(k).is_file()}
    if not sweeps:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    try:
        for i, (k, sw) in enumerate(sweeps.items()):
            eps = sw["eps"]
            order = sorted(range(len(eps)), key=lambda j: eps[j])
            color = f"C{i}"
            for name, style in (("pgd", "--"), ("pgd++hns", "-")):
                curve = sw["attacks"].get(name)
                if curve is None:
                    continue
                ax.plot([eps[j] for j in order], [curve["adv_acc"][j] for j in order], style,
                        color=color, marker="o", label=f"{_BY_KEY[k].label} {name.upper()}")
        ax.set_xlabel("eps (L∞, pixel units in [0, 1])")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("PGD (dashed) vs PGD++ HNS (solid)")
        fig.tight_layout()
        path = ctx.out / "sweep_pgd_vs_pgdpp.png"
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _report_stage(ctx: Context, deps: list[str]) -> Stage:
    summary_path = ctx.out / "summary.json"

    def run_it() -> dict[str, Any]:
        _combined_sweep_plot(ctx)
        md, summary = build_report(ctx)
        _write_json(summary_path, summary)
        ctx.markdown.parent.mkdir(parents=True, exist_ok=True)
        ctx.markdown.write_text(md)
        _log(f"  report: {ctx.markdown}  (summary: {summary_path})")
        return {"markdown": str(ctx.markdown), "verdicts": summary["verdicts"]}

    return Stage("report", "report: summary.json, plots, Markdown", 5.0,
                 [summary_path, ctx.markdown], run_it, deps)


# -- the plan -------------------------------------------------------------------------------------
def plan_stages(ctx: Context) -> list[Stage]:
    """Every stage of the run, in order (training, evaluation, signal, sweeps, check, report)."""
    stages = [_train_stage(ctx, m) for m in MODELS]
    stages += [_eval_stage(ctx, m) for m in MODELS]
    stages.append(_signal_stage(ctx))
    stages += [_sweep_stage(ctx, _BY_KEY[k]) for k in ctx.settings.sweep_models]
    stages.append(_rho_stage(ctx))
    stages.append(_clever_stage(ctx))
    stages.append(_peer_stage(ctx))
    stages.append(_report_stage(ctx, [s.key for s in stages]))
    return stages


def _stage_done(ctx: Context, stage: Stage) -> tuple[bool, str]:
    """(finished?, reason) of one stage from its marker, outputs and check."""
    marker = ctx.marker(stage.key)
    if not marker.is_file():
        return False, "not run yet"
    missing = [p for p in stage.outputs if not p.is_file()]
    if missing:
        return False, f"output {missing[0]} is missing"
    if stage.check is not None:
        try:
            body = _read_json(marker).get("result", {})
        except (OSError, json.JSONDecodeError):
            return False, f"marker {marker} is unreadable"
        problem = stage.check(body)
        if problem:
            return False, problem
    return True, "finished earlier"


def _prepare_out(out: Path, settings: Settings, force: bool) -> dict[str, Any]:
    """Create/validate the output folder; returns the manifest (new or the resumed one)."""
    manifest_path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise ReproError(f"--out {out} exists and is not a folder; choose another path.")
    has_files = out.is_dir() and any(out.iterdir())
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = _read_json(manifest_path)
        except (OSError, json.JSONDecodeError):
            manifest = None
    if has_files and manifest is None:
        raise ReproError(
            f"--out {out} already holds files but no readable {MANIFEST}: it is not a "
            "reproduction folder, so nothing there is overwritten or deleted (not even with "
            "--force). Choose an empty or new folder.")
    if manifest is not None and force:
        _log(f"--force: deleting the earlier reproduction in {out}")
        shutil.rmtree(out)
        manifest = None
    if manifest is not None:
        old = manifest.get("settings")
        if old != settings.to_dict() or manifest.get("format") != FORMAT_VERSION:
            diff = sorted(k for k in settings.to_dict() if (old or {}).get(k) != settings.to_dict()[k])
            raise ReproError(
                f"--out {out} holds a reproduction made with other settings (differs in: "
                f"{', '.join(diff) or 'format version'}). Refusing to mix or overwrite them: pass "
                "--force to delete it and start over, or choose another --out.")
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT_VERSION, "settings": settings.to_dict(), "created": _now(),
                "status": "running", "stage_seconds": {}, "stage_estimates": {}}
    _write_json(manifest_path, manifest)
    return manifest


def _print_plan(ctx: Context, stages: Sequence[Stage],
                status: Mapping[str, tuple[bool, str]]) -> float:
    """Print the stage list with estimates; returns the estimated seconds still to run."""
    n = len(stages)
    s = ctx.settings
    _log(f"bnnrobust reproduction ({s.profile}{', synthetic data' if s.synthetic else ''}) "
         f"-> {ctx.out}")
    _log(f"speed: {1000 * ctx.step_seconds:.2f} ms per image-step (forward+backward) on "
         f"{torch.get_num_threads()} thread(s); plan (generous estimates):")
    for i, st in enumerate(stages, 1):
        done, why = status.get(st.key, (False, ""))
        _log(f"  {i:2d}/{n} {st.title:<62} {_fmt_s(st.estimate_s):>9}"
             f"{'  (reused: ' + why + ')' if done else ''}")
    todo = sum(st.estimate_s for st in stages if not status.get(st.key, (False, ""))[0])
    _log(f"  total to run: {_fmt_s(todo)}"
         + ("  (the estimates are generous, ~1.4x a pilot; this is likely over the 60-minute "
            "budget on this machine right now: on a busy machine try --threads 1)"
            if todo > 80 * 60 else ""))
    return todo


def run(out: str | Path, *, quick: bool = False, synthetic: bool = False, force: bool = False,
        markdown: str | Path | None = None, progress: bool = True,
        settings: Settings | None = None, step_seconds: float | None = None,
        dry_run: bool = False, threads: int | None = None, zoo: bool = False) -> dict[str, Any]:
    """Run (or resume) the reproduction; returns the ``summary.json`` body.

    Args:
        out: output folder (``results/fmnist``).
        quick: toy-size profile (:meth:`Settings.quick`), for tests and smoke runs.
        synthetic: use :class:`~bnnrobust.data.SyntheticDataModule` instead of Fashion-MNIST.
        force: delete an earlier reproduction in ``out`` and start from scratch.
        markdown: report path; default ``docs/results.md`` for the full Fashion-MNIST run,
            ``<out>/results.md`` otherwise (so that toy runs never replace the real report).
        progress: progress bars inside evaluation stages.
        settings: explicit settings (overrides ``quick``/``synthetic``).
        step_seconds: seconds per image-step for the estimates (default: measured here).
        dry_run: only print the plan (stages and estimates); write nothing.
        threads: torch CPU threads (default: torch's, one per core). On a machine busy with
            other work, 1 thread is much faster than 2 fighting for the same cores.
        zoo: full Fashion-MNIST profile only: reuse the model zoo's checkpoints of the
            ``configs/fmnist/`` recipes (trained by ``train.py``; checksum, architecture, data
            and epoch checked) instead of training them again; the adversarial trainings run.

    Raises:
        ReproError: ``out`` holds a complete run, another run's settings or foreign files
            (and ``force`` is false), or a needed file is missing.
    """
    if zoo and (quick or synthetic):
        raise ReproError("--zoo reuses the zoo's Fashion-MNIST networks of the full profile; it "
                         "cannot be combined with --quick or --synthetic.")
    s = settings or (Settings.quick(synthetic) if quick else Settings.full(synthetic, zoo=zoo))
    if threads is not None:
        if threads < 1:
            raise ReproError(f"--threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)
    out = Path(out)
    if markdown is None:
        markdown = DEFAULT_MARKDOWN if (s.profile == "full" and not s.synthetic) else out / "results.md"
    markdown = Path(markdown)
    if not s.synthetic:
        _check_fmnist()
    if dry_run:
        ctx = Context(out, s, markdown, progress)
        ctx.step_seconds = step_seconds or calibrate(s.width or 1.0)
        stages = plan_stages(ctx)
        todo = _print_plan(ctx, stages, {})
        return {"plan": {st.key: st.estimate_s for st in stages}, "total_s": todo,
                "step_seconds": ctx.step_seconds}
    manifest = _prepare_out(out, s, force)
    ctx = Context(out, s, markdown, progress)
    status = {st.key: _stage_done(ctx, st) for st in plan_stages(ctx)}
    if all(done for done, _ in status.values()):
        raise ReproError(
            f"--out {out} already holds a complete reproduction (report {markdown}). Refusing to "
            "overwrite it: pass --force to delete it and recompute everything, or delete one "
            f"output (e.g. {ctx.eval_json(REF_KEY)}) and rerun to recompute just that part.")
    ctx.step_seconds = step_seconds or calibrate(s.width or 1.0)
    stages = plan_stages(ctx)  # again, with this machine's speed in the estimates
    torch.set_float32_matmul_precision("high")
    t_start = time.perf_counter()
    n = len(stages)
    _print_plan(ctx, stages, status)
    manifest["step_seconds"] = ctx.step_seconds
    manifest["status"] = "running"
    manifest.setdefault("stage_estimates", {}).update({st.key: st.estimate_s for st in stages})
    _write_json(out / MANIFEST, manifest)

    rerun: set[str] = set()
    spent_est = spent_real = 0.0
    for i, st in enumerate(stages, 1):
        done, why = status[st.key]
        if done and not any(d in rerun for d in st.deps):
            _log(f"[{i}/{n}] {st.title}: reused ({why})")
            continue
        if done:
            _log(f"[{i}/{n}] {st.title}: rerun (an input changed)")
        elapsed = time.perf_counter() - t_start
        ratio = spent_real / spent_est if spent_est > 0 else 1.0
        remaining = sum(x.estimate_s for x in stages[i - 1:]
                        if not status[x.key][0] or any(d in rerun for d in x.deps) or x.key == st.key)
        _log(f"[{i}/{n}] {st.title} — est. {_fmt_s(st.estimate_s * ratio)} | elapsed "
             f"{_fmt_s(elapsed)} | ETA {_fmt_s(remaining * ratio)}")
        t0 = time.perf_counter()
        ctx.marker(st.key).unlink(missing_ok=True)
        result = st.run()
        dt = time.perf_counter() - t0
        spent_est += st.estimate_s
        spent_real += dt
        _write_json(ctx.marker(st.key), {"stage": st.key, "finished": _now(), "seconds": dt,
                                         "result": result})
        manifest["stage_seconds"][st.key] = dt
        _write_json(out / MANIFEST, manifest)
        rerun.add(st.key)
        _log(f"[{i}/{n}] done in {_fmt_s(dt)} (estimate {_fmt_s(st.estimate_s)})")
    manifest["status"] = "complete"
    manifest["finished"] = _now()
    manifest["trained_in_last_invocation"] = ctx.trained
    _write_json(out / MANIFEST, manifest)
    # the report was written before these last manifest fields; refresh its time table
    md, summary = build_report(ctx)
    markdown.write_text(md)
    _write_json(out / "summary.json", summary)
    _log(f"finished in {_fmt_s(time.perf_counter() - t_start)}; report: {markdown}")
    return summary


def _check_fmnist() -> None:
    from bnnrobust.data import FashionMNISTDataModule

    try:
        FashionMNISTDataModule().locate()
    except FileNotFoundError as err:
        raise ReproError(f"{err} The reproduction is offline: install the Fashion-MNIST files, "
                         "or pass --synthetic to run the pipeline on synthetic data.") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bnnrobust.reproduce",
        description=("Reproduce the paper's findings offline on Fashion-MNIST (2 CPU cores, "
                     "about 1.5 h, or with --zoo under one): train seven networks, attack them, write JSON/PNG results "
                     "and the Markdown report (docs/results.md). See docs/results.md."))
    p.add_argument("--out", required=True, help="Output folder, e.g. results/fmnist.")
    p.add_argument("--quick", action="store_true",
                   help="Toy size (a few hundred images, tiny budgets): the pipeline in 1-2 min.")
    p.add_argument("--synthetic", action="store_true",
                   help="Synthetic data instead of Fashion-MNIST (no dataset needed).")
    p.add_argument("--force", action="store_true",
                   help="Delete the earlier reproduction in --out and start from scratch.")
    p.add_argument("--markdown", default=None,
                   help="Report path (default docs/results.md for the full Fashion-MNIST run, "
                        "<out>/results.md otherwise).")
    p.add_argument("--zoo", action="store_true",
                   help="Reuse the model zoo's checkpoints of the configs/fmnist/ recipes "
                        "(checksum and recipe checked) instead of training them again.")
    p.add_argument("--no-progress", action="store_true", help="No progress bars inside stages.")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the plan (stages, estimated minutes) and exit; writes nothing.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: one per core; use 1 on a busy machine).")
    p.add_argument("--step-ms", type=float, default=None,
                   help="Milliseconds per image-step for the estimates (default: measured).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bnnrobust.reproduce``; returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        run(args.out, quick=args.quick, synthetic=args.synthetic, force=args.force,
            markdown=args.markdown, progress=not args.no_progress,
            step_seconds=None if args.step_ms is None else args.step_ms / 1000.0,
            dry_run=args.dry_run, threads=args.threads, zoo=args.zoo)
    except ReproError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
