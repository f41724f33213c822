"""AdversarialClassifier: outer-loss-only gradients, BN modes, robustness gain, NJS re-estimation,
construction errors, configs and a 2-process DDP run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnnrobust.attacks import NJS, PGD, njs_temperature
from bnnrobust.attacks.base import eval_mode
from bnnrobust.models import ConvNet
from bnnrobust.systems import AdversarialClassifier, ImageClassifier
from bnnrobust.systems.adversarial import (
    PAPER_TRAIN_ATTACK,
    BatchStatsView,
    batch_stats_batchnorm,
)

ROOT = Path(__file__).resolve().parents[1]
BINARIZERS = ["none", "bc", "gd_tanh", "md_tanh_s", "hubara"]
FMNIST_ATTACK = {"name": "pgd", "eps": 0.1, "step_size": 0.025, "steps": 3}


def _tiny_convnet(binarizer: str = "bc", num_classes: int = 4) -> nn.Module:
    return ConvNet(num_classes=num_classes, in_channels=1, width=0.125, binarizer=binarizer)


def _batch(n: int = 12, num_classes: int = 4, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, size, size, generator=g), torch.randint(
        0, num_classes, (n,), generator=g
    )


def _trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


def _bn_stats(model: nn.Module) -> list[torch.Tensor]:
    return [
        t.clone()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for t in (m.running_mean, m.running_var, m.num_batches_tracked)
    ]


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("inner_bn_mode", ["eval", "train"])
def test_training_step_gradients_are_those_of_the_outer_loss_only(inner_bn_mode: str) -> None:
    system = AdversarialClassifier(
        _tiny_convnet("bc"), train_attack=FMNIST_ATTACK, inner_bn_mode=inner_bn_mode
    )
    reference = copy.deepcopy(system)
    system.train()
    reference.train()
    x, y = _batch()
    captured: dict[str, Any] = {}
    make_adversarial = system.make_adversarial

    def spy(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, int]:
        stats_before = _bn_stats(system.model)
        out = make_adversarial(xb, yb)
        captured["grads_after_inner"] = [p.grad for p in system.parameters()]
        captured["view"] = isinstance(system.attack_model(), BatchStatsView)
        captured["stats_unchanged"] = all(
            torch.equal(a, b) for a, b in zip(stats_before, _bn_stats(system.model), strict=True)
        )
        captured["x_mixed"] = out[0].clone()
        return out

    system.make_adversarial = spy  # type: ignore[method-assign]
    loss = system.training_step((x, y), 0)
    loss.backward()
    assert all(g is None for g in captured["grads_after_inner"]), "the inner loop left .grad"
    assert captured["view"] == (inner_bn_mode == "train")
    assert captured["stats_unchanged"], "the inner loop updated BatchNorm running statistics"
    x_adv = captured["x_mixed"]
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(x_adv, x)

    # a plain CE step on the same adversarial batch, from the same starting state
    ref_loss = F.cross_entropy(reference(x_adv), y)
    ref_loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach())
    for (name, p), q in zip(system.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=f"gradient of {name} differs")
    # the outer forward updated the running statistics exactly like a plain training forward
    for a, b in zip(_bn_stats(system.model), _bn_stats(reference.model), strict=True):
        torch.testing.assert_close(a, b)


def test_batch_stats_view_is_a_training_forward_without_running_stat_updates() -> None:
    model = _tiny_convnet("none")
    x, _ = _batch(8)
    with torch.no_grad():
        model.train()
        expected = model(x)  # batch statistics (and an update we do not want below)
        model.eval()
        eval_out = model(x)
    stats = _bn_stats(model)
    view = BatchStatsView(model)
    with eval_mode(view), torch.no_grad():  # what an attack does to the module it gets
        out = view(x)
        assert not any(m.training for m in model.modules())
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, eval_out)
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(model), strict=True))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.track_running_stats and not bn.training  # flags restored
    with batch_stats_batchnorm(model):
        assert bn.training and not bn.track_running_stats
    assert bn.track_running_stats and not bn.training


@pytest.mark.parametrize("binarizer", BINARIZERS)
def test_adversarial_step_works_with_every_binarizer(binarizer: str) -> None:
    system = AdversarialClassifier(
        _tiny_convnet(binarizer), train_attack=FMNIST_ATTACK, adv_ratio=0.5
    )
    system.train()
    x, y = _batch(10)
    x_mixed, k = system.make_adversarial(x, y)
    assert k == 5
    assert torch.equal(x_mixed[k:], x[k:])
    assert (x_mixed[:k] - x[:k]).abs().max() <= 0.1 + 1e-6
    assert x_mixed.min() >= 0 and x_mixed.max() <= 1
    loss = system.training_step((x, y), 0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in system.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_adv_ratio_zero_is_standard_training() -> None:
    system = AdversarialClassifier(_tiny_convnet("none"), train_attack=FMNIST_ATTACK, adv_ratio=0)
    x, y = _batch(6)
    x_mixed, k = system.make_adversarial(x, y)
    assert k == 0 and x_mixed is x
    assert [system.num_adversarial(b) for b in (1, 2, 3, 128)] == [0, 0, 0, 0]
    half = AdversarialClassifier(_tiny_convnet("none"), train_attack=FMNIST_ATTACK, adv_ratio=0.5)
    assert [half.num_adversarial(b) for b in (1, 3, 128)] == [1, 2, 64]


# ----------------------------------------------------------------------------- robustness


def _separable_problem(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2 classes, 64 pixels: one robust feature (shift 0.4, right 90 % of the time) and 63 weak
    ones (shift 0.1 ± noise 0.1). Standard training leans on the weak features, which an
    eps = 0.15 adversary flips; only the robust feature survives the attack."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    s = (2 * y - 1).float()
    agree = (torch.rand(n, generator=g) < 0.9).float() * 2 - 1
    x = 0.5 + 0.1 * s[:, None] + 0.1 * torch.randn(n, 64, generator=g)
    x[:, 0] = 0.5 + 0.4 * s * agree
    return x.clamp(0, 1).view(n, 1, 8, 8), y


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))


def _adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


def test_adversarial_training_raises_pgd_accuracy_over_standard_training() -> None:
    eps = 0.15
    x_train, y_train = _separable_problem(1000, seed=0)
    x_test, y_test = _separable_problem(500, seed=1)
    results = {}
    for adversarial in (False, True):
        L.seed_everything(0)
        if adversarial:
            system: ImageClassifier = AdversarialClassifier(
                _mlp(),
                optimizer=_adam,
                train_attack={"name": "pgd", "eps": eps, "step_size": eps / 4, "steps": 7},
            )
        else:
            system = ImageClassifier(_mlp(), optimizer=_adam)
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=100, shuffle=True)
        _trainer(max_epochs=15).fit(system, loader)
        model = system.model.eval()
        x_adv = PGD(eps=eps, step_size=eps / 8, steps=20, seed=0)(model, x_test, y_test)
        with torch.no_grad():
            clean = (model(x_test).argmax(1) == y_test).float().mean().item()
            robust = (model(x_adv).argmax(1) == y_test).float().mean().item()
        results[adversarial] = (clean, robust)
    (std_clean, std_robust), (adv_clean, adv_robust) = results[False], results[True]
    assert std_clean > 0.95, results  # the problem is learnable...
    assert adv_robust >= std_robust + 0.20, results  # ...and adversarial training pays off
    assert adv_clean >= adv_robust and adv_clean > 0.8, results


# ----------------------------------------------------------------------------- NJS


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.first_batch: torch.Tensor | None = None
        self.beta1: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.first_batch is None:
            self.first_batch = batch[0].clone()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.beta1.append(float(pl_module.njs_rule.beta1))


def test_njs_beta1_is_reestimated_every_interval_on_the_first_batch() -> None:
    from bnnrobust.data import SyntheticDataModule
    from callbacks.robustness_monitor import RobustnessMonitor

    system = AdversarialClassifier(
        _tiny_convnet("md_tanh_s", num_classes=4),
        optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
        train_attack={"name": "pgd++njs", "eps": 0.1, "step_size": 0.025, "steps": 2},
        njs_interval=2,
        njs_calibration_samples=8,
    )
    assert system.njs_rule is not None and system.njs_rule.n_jsv == 8
    data = SyntheticDataModule(
        num_samples=80, num_classes=4, image_size=12, batch_size=16
    )  # 5 steps = 1 epoch
    recorder = _Recorder()
    monitor = RobustnessMonitor(
        num_samples=8,
        batch_size=8,
        histogram=False,
        hessian_figure=False,
        attacks=["pgd", "pgd++njs"],
    )
    trainer = _trainer(
        max_steps=5, limit_val_batches=1, callbacks=[recorder, monitor], log_every_n_steps=1
    )
    trainer.fit(system, data)

    steps = [s for s, _ in system.njs_history]
    values = [b for _, b in system.njs_history]
    assert steps == [0, 2, 4]
    assert len(set(values)) == 3, values  # weights changed, so did β1
    b = recorder.beta1
    assert b == [values[0], values[0], values[1], values[1], values[2]]
    # the calibration batch is fixed: the first 8 samples of the first training batch
    assert recorder.first_batch is not None
    assert torch.equal(system._njs_ref, recorder.first_batch[:8])
    # and β1 is NJS's on that batch for the weights at the last calibration
    system.njs_rule.calibrate(system.model, system._njs_ref)
    assert system.njs_rule.beta1 != values[-1]  # one more optimizer step since then
    metrics = trainer.callback_metrics
    for key in (
        "train/loss",
        "train/acc_epoch",
        "train/adv_loss",
        "train/adv_acc_epoch",
        "train/njs_beta1",
        "robust/pgd_acc",
        "robust/clean_acc",
    ):
        assert key in metrics, sorted(metrics)

    # checkpoint round trip keeps the calibration batch
    ckpt: dict[str, Any] = {}
    system.on_save_checkpoint(ckpt)
    restored = AdversarialClassifier(
        _tiny_convnet("md_tanh_s"),
        train_attack={"name": "pgd++njs", "eps": 0.1, "step_size": 0.025, "steps": 2},
    )
    restored.on_load_checkpoint(ckpt)
    assert torch.equal(restored._njs_ref, system._njs_ref)
    assert restored.njs_rule.beta1 == ckpt["adversarial_njs"]["beta1"]


@pytest.mark.parametrize("inner_bn_mode", ["eval", "train"])
def test_njs_calibration_matches_njs_temperature(inner_bn_mode: str) -> None:
    system = AdversarialClassifier(
        _tiny_convnet("none"),
        train_attack={"name": "pgd++njs", "eps": 0.1, "steps": 1},
        njs_calibration_samples=6,
        inner_bn_mode=inner_bn_mode,
    )
    system.train()
    x, y = _batch(10)
    # the same BatchNorm view as the attack; computed before the outer forward moves BN stats
    view = BatchStatsView(system.model) if inner_bn_mode == "train" else system.model
    expected = njs_temperature(view, x[:6], n_jsv=6)
    other = njs_temperature(
        system.model if inner_bn_mode == "train" else BatchStatsView(system.model), x[:6], n_jsv=6
    )
    assert other != pytest.approx(expected)  # the BatchNorm mode matters
    system.training_step((x, y), 0)
    assert torch.equal(system._njs_ref, x[:6])
    assert system.njs_history == [(0, pytest.approx(expected))]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_attack": {"name": "pgd", "eps": 8, "steps": 7}}, r"eps=8.*8/255"),
        ({"train_attack": {"name": "pgd", "eps": 0.0, "step_size": 0.01}}, r"eps in \(0, 1\]"),
        ({"train_attack": {"name": "pgd", "eps": -0.1}}, r"eps must be >= 0"),
        (
            {"train_attack": {"name": "pgd", "eps": 0.1, "steps": 0}},
            r"steps must be an integer >= 1",
        ),
        (
            {"train_attack": {"name": "pgd", "eps": 0.1, "temperature": "foo"}},
            r"Unknown temperature 'foo'",
        ),
        ({"train_attack": "pgd++foo"}, r"Unknown attack 'pgd\+\+foo'"),
        ({"adv_ratio": 1.5}, r"adv_ratio must be a number in \[0, 1\].*1.5"),
        ({"inner_bn_mode": "batch"}, r"inner_bn_mode must be one of \('eval', 'train'\).*'batch'"),
        ({"njs_interval": 0}, r"njs_interval must be an integer >= 1.*0"),
        ({"njs_calibration_samples": 0}, r"njs_calibration_samples.*>= 1.*0"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdversarialClassifier(_tiny_convnet("none"), **kwargs)


def test_default_is_the_paper_table4_attack() -> None:
    system = AdversarialClassifier(_tiny_convnet("none"))
    attack = system.train_attack
    assert isinstance(attack, PGD) and attack.temperature is None
    assert (attack.eps, attack.step_size, attack.steps, attack.random_start) == (
        pytest.approx(8 / 255),
        pytest.approx(2 / 255),
        7,
        True,
    )
    assert system.hparams["train_attack"] == PAPER_TRAIN_ATTACK
    hns = AdversarialClassifier(
        _tiny_convnet("none"), train_attack="pgd++hns", attack_dataset="fmnist"
    )
    assert hns.train_attack.name == "pgd++hns" and hns.njs_rule is None
    njs = AdversarialClassifier(
        _tiny_convnet("none"), train_attack=PGD(0.1, 0.025, 7, temperature=NJS())
    )
    assert njs.njs_rule is njs.train_attack.temperature
    assert njs.hparams["train_attack"]["name"] == "pgd++njs"


# ----------------------------------------------------------------------------- configs


CONFIGS = sorted(
    [
        *ROOT.glob("configs/cifar10/adv_resnet18_*.yaml"),
        *ROOT.glob("configs/fmnist/adv_convnet_*.yaml"),
    ]
)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_adversarial_configs_instantiate(config: Path, tmp_path: Path) -> None:
    from bnnrobust.training import TrainCLI

    args = ["--config", str(config), "--log_dir", str(tmp_path), "--trainer.logger", "false"]
    if "cifar10" in str(config):
        args += [
            "--data",
            "bnnrobust.data.SyntheticDataModule",
            "--data.init_args.in_channels",
            "3",
            "--data.init_args.image_size",
            "32",
        ]
    cli = TrainCLI(args=args, run=False)
    system = cli.model
    assert isinstance(system, AdversarialClassifier)
    attack = system.train_attack
    expected_eps, expected_step = (8 / 255, 2 / 255) if "cifar10" in str(config) else (0.1, 0.025)
    assert (attack.name, attack.steps, attack.random_start) == ("pgd", 7, True)
    assert attack.eps == pytest.approx(expected_eps) and attack.step_size == pytest.approx(
        expected_step
    )
    binarizer = config.stem.split("_", 2)[2]
    from bnnrobust.binarize import binary_modules

    layers = binary_modules(system.model)
    if binarizer == "ref":
        assert not layers or all(layer.binarizer.name == "none" for layer in layers)
    else:
        assert layers and all(layer.binarizer.name == binarizer for layer in layers)


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path: Path) -> None:
    """train.py with 2 CPU processes (gloo), PGD++NJS inner loop (β1 averaged over ranks)."""
    summary = tmp_path / "summary.json"
    attack = json.dumps({"name": "pgd++njs", "eps": 0.1, "step_size": 0.025, "steps": 2})
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs/fmnist/adv_convnet_md_tanh_s.yaml"),
        "--data",
        "bnnrobust.data.SyntheticDataModule",
        "--data.init_args.num_samples",
        "32",
        "--data.init_args.image_size",
        "12",
        "--data.init_args.batch_size",
        "8",
        "--model.init_args.model.init_args.width",
        "0.125",
        "--model.init_args.train_attack",
        attack,
        "--model.init_args.njs_interval",
        "1",
        "--model.init_args.test_attacks",
        "[]",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        # the config's robustness monitor needs more validation samples than this toy set has
        "--trainer.callbacks",
        "[{class_path: callbacks.binarizer_schedule.BinarizerSchedule}]",
        "--trainer.enable_progress_bar",
        "false",
        "--skip_test",
        "true",
        "--log_dir",
        str(tmp_path / "logs"),
        "--summary_json",
        str(summary),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads(summary.read_text())  # 32 samples / 2 ranks / 8 = 2 steps = 1 epoch
    assert "val/clean_acc" in metrics, metrics
    last = tmp_path / "logs/adv_convnet_md_tanh_s/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    njs = ckpt["adversarial_njs"]
    assert njs["step"] == 1 and njs["beta1"] > 0 and njs["x_ref"].shape == (8, 1, 12, 12)
