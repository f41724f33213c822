"""Hostile inputs: no code from a checkpoint, no remote paths by default, no 0-255 eps.

Each test here reproduces one fault of the catalogue in docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from bnnrobust.attacks.apgd import APGD
from bnnrobust.attacks.peers import Square
from bnnrobust.attacks.pgd import FGSM, PGD
from bnnrobust.evaluation.checkpoint import CheckpointError, load_system
from bnnrobust.safe_loading import UntrustedInputError, check_class_paths, check_local_path

TINY = {
    "model": {
        "class_path": "bnnrobust.systems.ImageClassifier",
        "init_args": {
            "model": {"class_path": "bnnrobust.models.ConvNet", "init_args": {"width": 0.25}},
        },
    },
    "data": {
        "class_path": "bnnrobust.data.SyntheticDataModule",
        "init_args": {"num_samples": 48, "image_size": 12, "batch_size": 16, "num_classes": 4},
    },
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                "enable_progress_bar": False, "enable_model_summary": False},
}


class _Payload:
    """Pickles to a call that writes a marker file: loading it with weights_only=False runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _trained_checkpoint(tmp_path: Path) -> Path:
    from bnnrobust.training import main as train_main

    train_main(["--config", str(_tiny_config(tmp_path)), "--log_dir", str(tmp_path / "logs"),
                "--skip_test", "true"])
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return last


# -- 1. code execution through a pickled checkpoint ---------------------------------------------
@pytest.mark.parametrize("entry", ["fit", "test", "train.py"])
def test_a_pickle_payload_in_ckpt_path_never_runs(tmp_path: Path, entry: str) -> None:
    from bnnrobust.cli import main as cli_main
    from bnnrobust.training import main as train_main

    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "payload": _Payload(marker)}, evil)
    cfg = str(_tiny_config(tmp_path))
    logs = str(tmp_path / "logs")
    with pytest.raises((Exception, SystemExit)):  # any refusal will do; what matters is below
        if entry == "train.py":
            train_main(["--config", cfg, "--log_dir", logs, "--ckpt_path", str(evil),
                        "--skip_test", "true"])
        else:
            cli_main([entry, "--config", cfg, "--log_dir", logs, "--ckpt_path", str(evil)])
    assert not marker.exists(), "the checkpoint's pickled payload was executed"


@pytest.mark.parametrize("entry", ["fit", "test", "train.py"])
def test_remote_ckpt_path_is_refused_before_any_work(tmp_path: Path, entry: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from bnnrobust.cli import main as cli_main
    from bnnrobust.training import main as train_main

    cfg = str(_tiny_config(tmp_path))
    logs = tmp_path / "logs"
    url = "http://127.0.0.1:9/x.ckpt"
    with pytest.raises(SystemExit) as info:
        if entry == "train.py":
            train_main(["--config", cfg, "--log_dir", str(logs), "--ckpt_path", url])
        else:
            cli_main([entry, "--config", cfg, "--log_dir", str(logs), "--ckpt_path", url])
    assert "remote path" in str(info.value.code) and url in str(info.value.code)
    assert "--allow_remote_checkpoint" in str(info.value.code)
    assert not logs.exists()


def test_weights_only_false_is_refused(tmp_path: Path) -> None:
    from bnnrobust.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["test", "--config", str(_tiny_config(tmp_path)), "--log_dir",
                  str(tmp_path / "logs"), "--weights_only", "false"])
    assert "weights_only" in str(info.value.code)


@pytest.mark.parametrize("path", ["http://h/x.ckpt", "https://h/x.ckpt", "s3://b/x.ckpt",
                                  "hf://org/x.ckpt"])
def test_remote_paths_refused_by_the_evaluation_loader(path: str) -> None:
    with pytest.raises(CheckpointError, match="remote path"):
        load_system(path)
    assert check_local_path(path, allow_remote=True) == path
    assert check_local_path("logs/run/last.ckpt") == "logs/run/last.ckpt"


# -- 2. classes named by a checkpoint: allow-list before import ---------------------------------
def _with_class_path(src: Path, dst: Path, where: str, class_path: str) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    if where == "system":
        ckpt["hyper_parameters"]["_class_path"] = class_path
    elif where == "model":
        ckpt["hyper_parameters"]["model"]["class_path"] = class_path
    else:
        ckpt["datamodule_hyper_parameters"]["_class_path"] = class_path
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("where", ["system", "model", "data"])
def test_a_checkpoint_cannot_import_a_module_next_to_it(tmp_path: Path, where: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _trained_checkpoint(tmp_path)
    marker = tmp_path / "imported.txt"
    (tmp_path / "payload_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    bad = _with_class_path(ckpt, tmp_path / "bad.ckpt", where, "payload_mod.Net")
    with pytest.raises(CheckpointError) as info:
        load_system(bad)
    msg = str(info.value)
    assert "payload_mod.Net" in msg and "--allow_module payload_mod" in msg
    assert not marker.exists() and "payload_mod" not in sys.modules
    # the Zen of Python: `this` prints on import
    zen = _with_class_path(ckpt, tmp_path / "zen.ckpt", where, "this.Zen")
    with pytest.raises(CheckpointError, match="'this.Zen'"):
        load_system(zen)


def test_allowed_module_is_checked_then_loaded(tmp_path: Path) -> None:
    ckpt = _trained_checkpoint(tmp_path)
    system, dm = load_system(ckpt)
    assert dm is not None and not system.training
    # a user-allowed module passes the allow-list (and then fails only as a normal import)
    bad = _with_class_path(ckpt, tmp_path / "bad.ckpt", "model", "mypkg_missing.Net")
    with pytest.raises(CheckpointError, match="cannot"):
        load_system(bad, allow_modules=["mypkg_missing"])


def test_check_class_paths_walks_nested_lists_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    hp = {"model": {"class_path": "bnnrobust.models.ConvNet",
                    "init_args": {"binarizer": {"class_path": "evil.B"}}},
          "callbacks": [{"class_path": "torch.nn.Identity"}, {"class_path": "os.system"}]}
    with pytest.raises(UntrustedInputError) as info:
        check_class_paths(hp, "x")
    assert "evil.B" in str(info.value) and "os.system" in str(info.value)
    monkeypatch.setenv("BNNROBUST_ALLOW_MODULES", "evil, os")
    check_class_paths(hp, "x")
    # a prefix is not a package: 'torchevil' is not 'torch'
    with pytest.raises(UntrustedInputError, match="torchevil"):
        check_class_paths({"class_path": "torchevil.X"}, "x")


# -- 5. eps in 0-255 units ----------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: PGD(eps=8), lambda: FGSM(eps=8), lambda: APGD(eps=8.0),
    lambda: Square(eps=8.0), lambda: PGD(eps=1.5, norm="linf")])
def test_linf_eps_above_one_is_refused_with_the_fix(make: object) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel units.*255"):
        make()  # type: ignore[operator]


def test_l2_eps_may_exceed_one_but_not_the_image_diameter() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    PGD(eps=1.5, step_size=0.15, steps=1, norm="l2")(net, x, y)  # 1.5 < √16
    with pytest.raises(ValueError, match="diameter"):
        PGD(eps=5.0, step_size=0.5, steps=1, norm="l2")(net, x, y)


def test_eps_from_a_config_is_refused(tmp_path: Path) -> None:
    from bnnrobust.attacks.factory import build_attack

    with pytest.raises(ValueError, match="eps/255|divided by 255"):
        build_attack({"name": "pgd", "eps": 8}, "cifar10")


# -- 3. a broken network is an error, never a plausible accuracy --------------------------------
def test_non_finite_weight_is_refused_at_load_naming_the_tensor(tmp_path: Path) -> None:
    ckpt_path = _trained_checkpoint(tmp_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.dim() > 1)
    ckpt["state_dict"][key].fill_(float("nan"))
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=f"tensor {key!r} holds .* non-finite"):
        load_system(tmp_path / "nan.ckpt")


# -- 4. the wrong network behind identical state-dict keys --------------------------------------
def test_a_config_with_another_binarizer_is_refused(tmp_path: Path) -> None:
    ckpt = _trained_checkpoint(tmp_path)  # binarizer: none (float ConvNet)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["model"]["init_args"]["model"]["init_args"]["binarizer"] = "hubara"
    other = tmp_path / "hubara.yaml"
    other.write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="trained as binarizer 'none'.*builds binarizer 'hubara'"):
        load_system(ckpt, config=other)
    system, _ = load_system(ckpt, config=tmp_path / "tiny.yaml")  # its own config still loads
    assert not system.training


# -- 10. a truncated last.ckpt --------------------------------------------------------------------
def test_truncated_last_checkpoint_is_named_and_an_intact_one_offered(tmp_path: Path) -> None:
    import shutil

    from bnnrobust.training import main as train_main

    last = _trained_checkpoint(tmp_path)
    best = last.with_name("best-epoch0.ckpt")
    shutil.copyfile(last, best)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(tmp_path / "tiny.yaml"), "--log_dir", str(tmp_path / "logs"),
                    "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    msg = str(info.value.code)
    assert str(last) in msg and "unreadable" in msg
    assert f"--ckpt_path {best}" in msg


# -- 9. exact resume ------------------------------------------------------------------------------
def test_a_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Kill in epoch 2 (of 3), resume with --ckpt_path last: bit-identical weights, same TB run."""
    from bnnrobust.training import main as train_main

    (tmp_path / "crash_at.py").write_text(
        "import lightning as L\n"
        "class CrashAt(L.Callback):\n"
        "    def on_train_batch_start(self, trainer, *args):\n"
        "        if trainer.current_epoch == 2:\n"
        "            raise RuntimeError('simulated kill')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        cfg = yaml.safe_load(yaml.safe_dump(TINY))
        cfg["trainer"]["max_epochs"] = 3
        # adversarial training: random starts draw from the global generator every step
        cfg["model"]["class_path"] = "bnnrobust.systems.AdversarialClassifier"
        cfg["model"]["init_args"]["train_attack"] = {"name": "pgd", "eps": 0.1, "step_size": 0.05,
                                                     "steps": 1, "random_start": True}
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(cfg))
        common = ["--config", str(path), "--skip_test", "true", "--seed_everything", "3"]
        train_main([*common, "--log_dir", str(tmp_path / "a")])
        with pytest.raises(RuntimeError, match="simulated kill"):
            train_main([*common, "--log_dir", str(tmp_path / "b"),
                        "--trainer.callbacks+=crash_at.CrashAt"])
        train_main([*common, "--log_dir", str(tmp_path / "b"), "--ckpt_path", "last"])
    finally:
        sys.path.remove(str(tmp_path))
    a = torch.load(tmp_path / "a/tiny/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/tiny/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [p.name for p in (tmp_path / "b/tiny").glob("version_*")] == ["version_0"]


# -- 11. errors a person can read ----------------------------------------------------------------
@pytest.mark.parametrize("override, names", [
    (["--model.init_args.model.init_args.width", "0"], "width must be"),
    (["--data.init_args.batch_size", "0"], "batch_size must be a positive integer, got 0"),
    (["--model.init_args.model.init_args.binarizer", "nosuch"], "nosuch"),
    (["--model.init_args.test_attacks", "[{name: pgd, eps: -0.1}]"], "eps"),
    (["--model.init_args.test_attacks", "[{name: pgd, steps: 0}]"], "steps must be an integer >= 1"),
    (["--model.init_args.test_attacks", "[pgd_typo]"], "Unknown attack 'pgd_typo'"),
    (["--empty"], "is empty or not a mapping"),
])
def test_config_errors_are_one_paragraph_without_traceback(tmp_path: Path, override: list[str],
                                                           names: str) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cfg = _tiny_config(tmp_path)
    if override == ["--empty"]:
        cfg.write_text("")
        override = []
    proc = subprocess.run([sys.executable, str(root / "train.py"), "--config", str(cfg),
                           "--log_dir", str(tmp_path / "logs"), *override],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**__import__("os").environ, "BNNROBUST_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and names in proc.stderr, proc.stderr[-2000:]


def test_debug_flag_keeps_the_traceback(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "train.py"), "--config",
                           str(_tiny_config(tmp_path)), "--log_dir", str(tmp_path / "logs"),
                           "--data.init_args.batch_size", "0", "--debug"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# -- 6. a linked value given on the command line -------------------------------------------------
def test_a_flag_for_a_linked_value_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bnnrobust.training import main as train_main

    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(_tiny_config(tmp_path)), "--log_dir", str(tmp_path / "logs"),
                    "--model.init_args.model.init_args.num_classes", "5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.init_args.model.init_args.num_classes is set from the data module" in err
    assert "data.num_classes" in err


# -- 3 and 4. broken outputs at evaluation time ---------------------------------------------------
class _NaNNet(torch.nn.Module):
    def __init__(self, classes: int = 4, nan: bool = True) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, classes)
        self.nan = nan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.nan else out


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 4, 4, generator=g), torch.randint(0, 4, (12,), generator=g)


def test_nan_logits_stop_the_evaluation() -> None:
    from bnnrobust.evaluation.runner import evaluate

    with pytest.raises(ValueError, match="non-finite logits.*sample 0"):
        evaluate(_NaNNet(), _data(), {"pgd": PGD(eps=0.1, step_size=0.05, steps=1)},
                 progress=False)


def test_logit_count_and_labels_are_checked_once_per_evaluation() -> None:
    from bnnrobust.evaluation.runner import evaluate

    x, y = _data()
    with pytest.raises(ValueError, match="outputs 3 logits, but the data has 4 classes"):
        evaluate(_NaNNet(classes=3, nan=False), (x, y), {}, progress=False, num_classes=4)
    with pytest.raises(ValueError, match="Labels must lie in"):
        evaluate(_NaNNet(classes=4, nan=False), (x, y + 10), {}, progress=False)


def test_nan_logits_stop_the_test_loop_and_the_monitor(tmp_path: Path) -> None:
    import lightning as L

    from bnnrobust.systems import ImageClassifier
    from callbacks.robustness_monitor import RobustnessMonitor

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    system = ImageClassifier(model=_NaNNet(), num_classes=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False,
                        default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or inf\) on a test batch"):
        trainer.test(system, dataloaders=loader)

    class _NoValCheck(ImageClassifier):
        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            pass  # leave the check to the monitor

    fit = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_epochs=1,
                    enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0,
                    enable_checkpointing=False, default_root_dir=str(tmp_path),
                    callbacks=[RobustnessMonitor(num_samples=6, attacks=["pgd"])])
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or inf\) on the robustness monitor"):
        fit.fit(_NoValCheck(model=_NaNNet(), num_classes=4), train_dataloaders=loader,
                val_dataloaders=loader)


# -- 11. devices and dtypes ----------------------------------------------------------------------
def test_a_bad_or_missing_device_is_one_clear_error() -> None:
    from bnnrobust.evaluation.runner import resolve_device

    with pytest.raises(ValueError, match=r"'tpu'.*accepted: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'cuda'.*no CUDA GPU is available.*use cpu"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_float64_images_evaluate_a_float32_model() -> None:
    from bnnrobust.evaluation import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(12, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    attacks = {"pgd": PGD(eps=0.1, steps=2, step_size=0.05)}
    as64 = evaluate(model, (x, y), attacks, progress=False)
    as32 = evaluate(model, (x.float(), y), attacks, progress=False)
    assert as64.clean_acc == as32.clean_acc
    assert as64.attacks["pgd"].correct == as32.attacks["pgd"].correct


def test_a_plain_state_dict_as_checkpoint_says_what_it_is(tmp_path: Path) -> None:
    plain = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), plain)
    with pytest.raises(CheckpointError, match=r"plain state_dict \(2 tensors.*Any model"):
        load_system(plain)


def test_the_test_loop_counts_robust_only_where_clean_is_correct(tmp_path: Path) -> None:
    """An 'attack' that makes every image classified correctly cannot lift robust accuracy
    above clean accuracy: robust means correct clean and after the attack."""
    import lightning as L
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from bnnrobust.attacks.base import Attack, AttackOutput
    from bnnrobust.systems import ImageClassifier

    class Oracle(Attack):
        name = "oracle"

        def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator | None) -> AttackOutput:
            return AttackOutput(y.float().view(-1, 1, 1, 1).expand_as(x).clone())

    class MeanSign(nn.Module):  # class 1 where the mean pixel exceeds 0.5
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.flatten(1).mean(1, keepdim=True) - 0.5
            return torch.cat([-m, m], dim=1) * 10

    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 2, (32,))
    system = ImageClassifier(MeanSign(), num_classes=2,
                             test_attacks=[{"name": "fgsm", "eps": 0.1, "label": "oracle"}])
    system.test_attacks = [Oracle()]  # the system's own metric for "oracle" stays
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    out = trainer.test(system, DataLoader(TensorDataset(x, y), batch_size=8))[0]
    clean = float((MeanSign()(x).argmax(1) == y).float().mean())
    assert out["test/clean_acc"] == pytest.approx(clean) and clean < 1.0
    assert out["test/oracle_acc"] == pytest.approx(clean)  # not 1.0

