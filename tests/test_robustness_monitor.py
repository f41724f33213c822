"""RobustnessMonitor: TensorBoard tags once per epoch, exactness under 2-process DDP, errors."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from bnnrobust.attacks.temperature import njs_temperature
from bnnrobust.data import SyntheticDataModule
from bnnrobust.metrics.signal import SUMMARY_KEYS, signal_propagation
from bnnrobust.systems import ImageClassifier
from callbacks.robustness_monitor import RobustnessMonitor

NUM_CLASSES = 4
ATTACKS: list[str | dict[str, Any]] = [
    {"name": "pgd", "steps": 2, "eps": 0.2, "step_size": 0.1},
    {"name": "pgd++njs", "steps": 2, "eps": 0.2, "step_size": 0.1},
    {"name": "pgd++hns", "steps": 2, "eps": 0.2, "step_size": 0.1},
]
ATTACK_NAMES = ("pgd", "pgd++njs", "pgd++hns")


def expected_tags() -> set[str]:
    tags = {"robust/clean_acc", "robust/seconds"} | {f"robust/{a}_acc" for a in ATTACK_NAMES}
    for prefix in ("robust/", "robust/njs/", "robust/hns/"):
        tags |= {prefix + k for k in SUMMARY_KEYS if not (k == "beta" and prefix == "robust/")}
    return tags


def make_system(lr: float) -> ImageClassifier:
    # plain torch layers: picklable for ddp_spawn; no BatchNorm, so DDP and single-process
    # training with lr = 0 keep identical weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, NUM_CLASSES))
    return ImageClassifier(model, optimizer=functools.partial(torch.optim.SGD, lr=lr),
                           num_classes=NUM_CLASSES)


def make_data() -> SyntheticDataModule:
    # 64 training samples, 16 validation samples
    return SyntheticDataModule(num_samples=64, num_classes=NUM_CLASSES, image_size=8,
                               batch_size=16, noise=0.6)


def make_trainer(root: Path, callbacks: list[Callback], max_epochs: int = 2,
                 **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=TensorBoardLogger(root, name="tb", version=0),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def read_events(root: Path) -> EventAccumulator:
    acc = EventAccumulator(str(root / "tb" / "version_0"), size_guidance={"scalars": 0, "images": 0,
                                                                         "histograms": 0})
    acc.Reload()
    return acc


def robust_scalars(acc: EventAccumulator) -> dict[str, list[float]]:
    return {tag: [e.value for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if tag.startswith("robust/")}


class SetModes(Callback):
    """Before the monitor: a mixed train/eval state that the monitor must restore."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.model.train()
        pl_module.model[0].eval()


class CheckModes(Callback):
    """After the monitor: the mixed state is back."""

    checked = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = pl_module.model
        assert m.training and m[1].training and not m[0].training, "modes not restored"
        type(self).checked += 1
        m.eval()


def test_tensorboard_holds_every_robust_tag_once_per_epoch(tmp_path: Path) -> None:
    L.seed_everything(0)
    monitor = RobustnessMonitor(num_samples=12, batch_size=5, signal_samples=9, attacks=ATTACKS,
                                seed=3)
    CheckModes.checked = 0
    trainer = make_trainer(tmp_path, [SetModes(), monitor, CheckModes()], num_sanity_val_steps=1)
    system, data = make_system(lr=0.05), make_data()
    trainer.fit(system, data)
    assert CheckModes.checked == 2

    acc = read_events(tmp_path)
    scalars = robust_scalars(acc)
    assert set(scalars) == expected_tags()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in scalars}
    assert all(len(v) == 2 for v in scalars.values()), {t: len(v) for t, v in scalars.items()}
    assert len({tuple(s) for s in steps.values()}) == 1  # same two steps (epochs) for every tag
    # the logged values are those of the last run, and consistent
    last = {tag: values[-1] for tag, values in scalars.items()}
    for tag, value in monitor.last_metrics.items():
        assert last[tag] == pytest.approx(value, rel=1e-6, nan_ok=True), tag
    for name in ATTACK_NAMES:
        assert 0.0 <= last[f"robust/{name}_acc"] <= last["robust/clean_acc"] <= 1.0
    assert last["robust/njs/jsv_mean"] > 0 and last["robust/hns/beta"] > 0
    stats = monitor.last_stats
    assert stats is not None and stats.n_samples == 9

    # the same numbers computed directly on the fixed subset (seeded permutation, seed 3)
    idx = torch.randperm(len(data.val_set), generator=torch.Generator().manual_seed(3))[:12]
    x = torch.stack([data.val_set[i][0] for i in idx])
    y = torch.stack([data.val_set[i][1] for i in idx])
    model = system.model
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert last["robust/clean_acc"] == pytest.approx(clean)
    beta1 = njs_temperature(model, x[:9])
    assert last["robust/njs/beta"] == pytest.approx(beta1, rel=1e-5)
    direct = signal_propagation(model, x[:9], y[:9], {"original": 1.0, "njs": beta1, "hns": "hns"})
    for variant, prefix in (("original", "robust/"), ("njs", "robust/njs/"), ("hns", "robust/hns/")):
        for key, value in direct.summary(variant).items():
            if f"{prefix}{key}" in last:
                assert last[f"{prefix}{key}"] == pytest.approx(value, rel=1e-5, abs=1e-7), (variant, key)
    # rank-zero images: histograms of βJ's singular values and the Hessian-norm figure
    tags = acc.Tags()
    assert {"robust/jsv_hist", "robust/njs/jsv_hist", "robust/hns/jsv_hist"} <= set(tags["histograms"])
    assert len(acc.Histograms("robust/jsv_hist")) == 2
    assert int(acc.Histograms("robust/jsv_hist")[-1].histogram_value.num) == stats.stats["original"]["jsv"].n
    assert "robust/hessian_norm" in tags["images"]


def test_every_n_epochs_and_validate(tmp_path: Path) -> None:
    L.seed_everything(0)
    monitor = RobustnessMonitor(every_n_epochs=2, num_samples=8, batch_size=8, signal_samples=8,
                                attacks=ATTACKS[:1], histogram=False, hessian_figure=False,
                                max_fraction=None)  # tiny epochs: no adaptation here
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, num_sanity_val_steps=1)
    system = make_system(lr=0.05)
    data = make_data()
    trainer.fit(system, data)
    scalars = robust_scalars(read_events(tmp_path))
    assert len(scalars["robust/pgd_acc"]) == 1  # epochs 0, 1, 2 → only epoch 1
    assert "robust/hns/jsv_mean" in scalars
    # trainer.validate (inference mode on by default) always runs the monitor
    monitor.last_metrics = {}
    trainer.validate(system, data, verbose=False)
    assert set(monitor.last_metrics) >= {"robust/clean_acc", "robust/pgd_acc", "robust/jsv_mean"}


def test_unknown_attack_fails_at_setup_before_training(tmp_path: Path) -> None:
    monitor = RobustnessMonitor(num_samples=8, attacks=["pgd", "no_such_attack"])
    trainer = make_trainer(tmp_path, [monitor])
    with pytest.raises(ValueError, match=r"attacks\[1\].*no_such_attack"):
        trainer.fit(make_system(lr=0.05), make_data())
    assert trainer.global_step == 0


def test_num_samples_larger_than_validation_set_fails_naming_both(tmp_path: Path) -> None:
    monitor = RobustnessMonitor(num_samples=100, attacks=["pgd"])
    trainer = make_trainer(tmp_path, [monitor])
    with pytest.raises(ValueError, match=r"num_samples=100 exceeds the 16 samples"):
        trainer.fit(make_system(lr=0.05), make_data())
    assert trainer.global_step == 0


def test_bad_arguments_and_default_preset() -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        RobustnessMonitor(every_n_epochs=0)
    with pytest.raises(TypeError, match="list"):
        RobustnessMonitor(attacks="pgd")  # type: ignore[arg-type]
    monitor = RobustnessMonitor()
    attacks, tags = monitor._build_attacks("synthetic")
    assert tags == ["pgd", "pgd++njs", "pgd++hns"]  # the quick preset
    assert all(a.steps <= 5 for a in attacks)


def run_monitor(root: Path, **trainer_kwargs: Any) -> dict[str, list[float]]:
    L.seed_everything(0)
    # 14 samples in batches of 4: rank 0 gets batches 0 and 2, rank 1 batches 1 and 3 (2 samples);
    # 9 signal samples: rank 0 gets 5, rank 1 gets 4
    monitor = RobustnessMonitor(num_samples=14, batch_size=4, signal_samples=9, attacks=ATTACKS, seed=1,
                                hessian_figure=False)
    trainer = make_trainer(root, [monitor], num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(make_system(lr=0.0), make_data())
    return robust_scalars(read_events(root))


@pytest.mark.slow
def test_ddp_two_processes_log_the_single_process_values(tmp_path: Path) -> None:
    single = run_monitor(tmp_path / "single", accelerator="cpu", devices=1)
    ddp = run_monitor(tmp_path / "ddp", accelerator="cpu", devices=2, strategy="ddp_spawn")
    assert set(ddp) == set(single) == expected_tags()
    for tag in sorted(single):
        if tag == "robust/seconds":
            continue
        assert len(ddp[tag]) == len(single[tag]) == 2, tag
        for a, b in zip(ddp[tag], single[tag], strict=True):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-7), (
                tag, a, b)
    # the attacks did something, so equality is not trivial
    assert single["robust/pgd_acc"][-1] < single["robust/clean_acc"][-1]


def test_a_tempered_attack_weaker_than_its_base_is_named(tmp_path: Path) -> None:
    L.seed_everything(0)
    # β = 1e-45 makes every logit (and its gradient) underflow to zero: the tempered PGD
    # keeps its random start, so it is weaker than plain PGD
    tiny = {"name": "pgd", "steps": 2, "eps": 0.2, "step_size": 0.1,
            "temperature": {"name": "fixed", "beta": 1e-45}}
    monitor = RobustnessMonitor(num_samples=16, batch_size=16, signal_samples=8,
                                attacks=[ATTACKS[0], tiny], histogram=False, hessian_figure=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"pgd\+\+beta1e-45 is weaker than pgd"):
        trainer.fit(make_system(lr=0.05), make_data())
    m = monitor.last_metrics
    assert m["robust/pgd++beta1e-45_acc"] > m["robust/pgd_acc"]
    assert len(monitor.last_notes) == 1 and "lowered the gradient signal" in monitor.last_notes[0]


def test_each_njs_attack_gets_beta1_in_its_own_jacobian_space(tmp_path: Path) -> None:
    """The monitor's β1 (normalized space) is not written into a pixel-space NJS attack."""
    from bnnrobust.models.normalize import Normalize

    L.seed_everything(0)
    pixel = {"name": "pgd", "steps": 1, "eps": 0.2, "step_size": 0.1,
             "temperature": {"name": "njs", "jacobian_space": "pixel"}}
    monitor = RobustnessMonitor(num_samples=16, batch_size=16, signal_samples=8,
                                attacks=[ATTACKS[1], pixel], histogram=False,
                                hessian_figure=False, seed=3)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, num_sanity_val_steps=0)
    system = make_system(lr=0.0)
    system.model = nn.Sequential(Normalize([0.5], [0.25]), system.model)
    data = make_data()
    trainer.fit(system, data)
    rules = {a.name: a.temperature for a in monitor.attacks}
    idx = torch.randperm(len(data.val_set), generator=torch.Generator().manual_seed(3))[:8]
    x = torch.stack([data.val_set[i][0] for i in idx])
    model = system.model
    assert rules["pgd++njs"].beta1 == pytest.approx(njs_temperature(model, x), rel=1e-5)
    assert rules["pgd++njs_pixel"].beta1 == pytest.approx(
        njs_temperature(model, x, jacobian_space="pixel"), rel=1e-5)
    assert rules["pgd++njs_pixel"].beta1 == pytest.approx(rules["pgd++njs"].beta1 * 0.25, rel=1e-4)


def test_an_expensive_monitor_runs_less_often_says_so_once_and_runs_at_the_end(
        tmp_path: Path) -> None:
    L.seed_everything(0)
    heavy = [{"name": "pgd", "steps": 30, "eps": 0.2, "step_size": 0.02, "restarts": 2}]
    monitor = RobustnessMonitor(num_samples=16, batch_size=16, signal_samples=16,
                                attacks=heavy, histogram=False, hessian_figure=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=5, num_sanity_val_steps=0)
    with pytest.warns(UserWarning, match=r"now runs every \d+ epochs") as caught:
        trainer.fit(make_system(lr=0.05), make_data())
    said = [w for w in caught if "now runs every" in str(w.message)]
    assert len(said) == 1
    assert monitor.interval > 1 and monitor.run_epochs[0] == 0 and monitor.run_epochs[-1] == 4
    assert len(monitor.run_epochs) < 5
    # max_fraction=None keeps every epoch
    keep = RobustnessMonitor(num_samples=16, batch_size=16, signal_samples=16, attacks=heavy,
                             histogram=False, hessian_figure=False, max_fraction=None)
    trainer = make_trainer(tmp_path / "keep", [keep], max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(make_system(lr=0.05), make_data())
    assert keep.run_epochs == [0, 1, 2] and keep.interval == 1
    with pytest.raises(ValueError, match="max_fraction"):
        RobustnessMonitor(max_fraction=0.0)
