"""``evaluate.py --model ... --weights ...`` (any model, bnnrobust/evaluation/any_model.py) and
the ``bnnrobust evaluate|reproduce|diagnose`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.data import SyntheticDataModule
from bnnrobust.evaluation.any_model import (
    AnyModelError,
    build_model,
    build_user_model,
    load_weights,
)
from bnnrobust.evaluation.cli import main as eval_main
from bnnrobust.models.normalize import Normalize

ROOT = Path(__file__).resolve().parents[1]
#: this file's classes, by the name the CLI imports them with (ROOT is on sys.path)
SPEC = "tests.test_evaluate_any_model:Net"
N = 48


class Net(nn.Module):
    """A user's own network on the synthetic data (1×16×16 images, 10 classes)."""

    def __init__(self, num_classes: int = 10, hidden: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, hidden),
                                  nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _stack(ds: Any, n: int | None = None) -> tuple[Tensor, Tensor]:
    n = len(ds) if n is None else n
    return torch.stack([ds[i][0] for i in range(n)]), torch.stack([ds[i][1] for i in range(n)])


def _test_images(n: int = N) -> tuple[Tensor, Tensor]:
    dm = SyntheticDataModule()
    dm.setup("test")
    return _stack(dm.test_set, n)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """The user's own loop: percent of argmax == label, in eval mode."""
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Net, Path]:
    """Net fitted briefly on the synthetic training split (so its accuracy is far from chance),
    saved as a plain state_dict."""
    torch.manual_seed(1)
    dm = SyntheticDataModule()
    dm.setup("fit")
    x, y = _stack(dm.train_set)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):  # a few steps: far from chance, below 100 %
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("any_model") / "sd.pt"
    torch.save(net.state_dict(), path)
    return net, path


def _run(tmp_path: Path, *args: str) -> dict:
    return eval_main(["--dataset", "synthetic", "--n", str(N), "--progress", "false",
                      "--output", str(tmp_path / "out" / "results.json"), *args])


# -- evaluate.py --model --------------------------------------------------------------------
def test_clean_accuracy_equals_the_users_own_loop(trained: tuple[Net, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    net, sd = trained
    # the module is named on the command line: allowed without BNNROBUST_ALLOW_MODULES
    monkeypatch.delenv("BNNROBUST_ALLOW_MODULES", raising=False)
    x, y = _test_images()
    expected = _accuracy(net, x, y)
    assert 30 < expected < 100  # trained, so a network without its weights would differ
    body = _run(tmp_path, "--model", SPEC, "--weights", str(sd), "--attacks", "fgsm")
    assert body["clean_acc"] == pytest.approx(expected)
    assert body["n"] == N and body["model"] == SPEC and body["weights"] == str(sd)
    assert body["dataset"] == "synthetic"
    assert 0 <= body["attacks"]["fgsm"]["adv_acc"] <= body["clean_acc"]
    assert body["attacks"]["fgsm"]["config"]["eps"] == pytest.approx(0.1)  # synthetic preset
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.startswith(f"# {SPEC} — synthetic, test")


def test_default_output_folder_and_run_name(trained: tuple[Net, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    eval_main(["--model", SPEC, "--weights", str(trained[1]), "--dataset", "synthetic", "--n",
               "8", "--attacks", "[]", "--progress", "false", "--run_name", "my net"])
    assert (tmp_path / "logs" / "my_net" / "eval" / "results.json").is_file()
    assert "== my net — synthetic, test ==" in capsys.readouterr().out


@pytest.mark.parametrize("prefix", ["model.", "module.", "model.module."])
def test_prefixed_keys_are_stripped(trained: tuple[Net, Path], tmp_path: Path,
                                    prefix: str) -> None:
    net, _ = trained
    path = tmp_path / "prefixed.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    model = build_model(SPEC, weights=path)
    x, _ = _test_images(8)
    assert torch.equal(model(x), net(x))


def test_lightning_checkpoint_dict(trained: tuple[Net, Path], tmp_path: Path) -> None:
    net, _ = trained
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in net.state_dict().items()},
                "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                "hyper_parameters": {"lr": 0.01}}, ckpt)
    x, y = _test_images()
    body = _run(tmp_path, "--model", SPEC, "--weights", str(ckpt), "--attacks", "[]")
    assert body["clean_acc"] == pytest.approx(_accuracy(net, x, y))


def test_wrong_keys_are_one_clear_error(trained: tuple[Net, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    state = dict(trained[0].state_dict())
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(SystemExit) as err:
        _run(tmp_path, "--model", SPEC, "--weights", str(bad))
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.startswith("error:") and msg.count("\n") == 1
    assert "1 missing in the weights (head.bias)" in msg
    assert "1 not in the model (extra.weight)" in msg
    assert not (tmp_path / "out").exists()
    other = tmp_path / "other.pt"  # same keys, other shapes
    torch.save(Net(hidden=7).state_dict(), other)
    with pytest.raises(AnyModelError, match=r"shape mismatch.*body\.1\.weight: weights \(7, 256\)"):
        build_model(SPEC, weights=other)


def test_normalize_is_the_hand_wrapped_model(trained: tuple[Net, Path], tmp_path: Path) -> None:
    net, sd = trained
    x, y = _test_images()
    mean, std = [0.3], [0.5]
    by_hand = _accuracy(nn.Sequential(Normalize(mean, std), net), x, y)
    assert by_hand != _accuracy(net, x, y)  # the wrapper changes this network's number
    body = _run(tmp_path, "--model", SPEC, "--weights", str(sd), "--attacks", "[]",
                "--normalize", "{mean: [0.3], std: [0.5]}")
    assert body["clean_acc"] == pytest.approx(by_hand)
    assert body["normalize"] == {"mean": mean, "std": std}


def test_torchvision_model_builds_without_download(tmp_path: Path) -> None:
    import torchvision

    net = build_user_model("torchvision:resnet18", {"num_classes": 10})
    ref = torchvision.models.resnet18(num_classes=10)
    assert {k: v.shape for k, v in net.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}
    assert not net.training
    body = _run(tmp_path, "--model", "torchvision:resnet18", "--model_args",
                "{num_classes: 10}", "--data", "{in_channels: 3, image_size: 32}",
                "--attacks", "[]", "--n", "4")
    assert body["n"] == 4 and 0 <= body["clean_acc"] <= 100
    with pytest.raises(AnyModelError, match="downloads nothing"):
        build_user_model("torchvision:resnet18", {"weights": "DEFAULT"})
    with pytest.raises(AnyModelError, match="Close names: resnet18"):
        build_user_model("torchvision:resnet181")


def test_zoo_weights_with_their_normalize(tmp_path: Path) -> None:
    from bnnrobust import zoo

    args = {"num_classes": 10, "in_channels": 1, "binarizer": "bc"}
    model = build_model("bnnrobust.models:ConvNet", model_args=args,
                        weights="zoo:fmnist_bnn_wq_bc",
                        normalize={"mean": [0.286], "std": [0.353]})
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), zoo.load("fmnist_bnn_wq_bc")(x))
    with pytest.raises(AnyModelError, match=r"add --normalize '\{mean: \[0.286\], std: \[0.353\]\}'"):
        build_model("bnnrobust.models:ConvNet", model_args=args, weights="zoo:fmnist_bnn_wq_bc")
    with pytest.raises(AnyModelError, match="make them agree"):
        build_model("bnnrobust.models:ConvNet", model_args=args, weights="zoo:fmnist_bnn_wq_bc",
                    normalize={"mean": [0.5], "std": [0.5]})


@pytest.mark.parametrize("binarizer", ["bc", "md_tanh_s"])
def test_binarizer_on_float_weights(trained: tuple[Net, Path], binarizer: str) -> None:
    from bnnrobust.binarize import binarize_model, binary_modules

    net, sd = trained
    model = build_model(SPEC, weights=sd, binarizer=binarizer)
    assert len(binary_modules(model)) == 2
    x, _ = _test_images(8)
    assert torch.equal(model(x), binarize_model(net, binarizer).eval()(x))


def test_load_weights_refuses_non_finite_tensors(trained: tuple[Net, Path], tmp_path: Path) -> None:
    state = dict(trained[0].state_dict())
    state["head.weight"] = state["head.weight"].clone()
    state["head.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(AnyModelError, match=r"tensor 'head.weight' holds 1 non-finite"):
        load_weights(Net(), path)
    load_weights(model := Net(), trained[1])
    assert torch.equal(model.head.weight, trained[0].head.weight)


def test_weights_files_that_are_not_weights(tmp_path: Path) -> None:
    import argparse

    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 50)
    torch.save({"w": torch.zeros(1), "ns": argparse.Namespace(x=1)}, tmp_path / "code.pt")
    torch.save({"lr": 0.1, "epochs": 3}, tmp_path / "hparams.pt")
    for name, needle in [("garbage.pt", "is unreadable"),
                         ("code.pt", "object of class argparse.Namespace"),
                         ("hparams.pt", "found: ['epochs', 'lr']")]:
        with pytest.raises(AnyModelError) as err:
            load_weights(Net(), tmp_path / name)
        assert needle in str(err.value) and name in str(err.value)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "No network given"),
        (["--ckpt", "x.ckpt", "--model", SPEC], "both name the network"),
        (["--model", SPEC, "--train_config", "t.yaml"], "--train_config only apply with --ckpt"),
        (["--ckpt", "x.ckpt", "--weights", "w.pt"], "--weights only apply with --model"),
        (["--model", SPEC, "--dataset", "imagenet"], "accepted: cifar10, cifar100, fmnist, mnist, synthetic"),
        (["--model", SPEC, "--dataset", "synthetic", "--data", "{bogus: 1}"], "accepted: num_samples"),
        (["--model", "no_such_module_xyz:Net", "--dataset", "synthetic"], "cannot be imported"),
        (["--model", "tests.test_evaluate_any_model:Nope", "--dataset", "synthetic"], "nn.Module classes: Net"),
        (["--model", "nets/net.py:Net", "--dataset", "synthetic"], "not a file path"),
        (["--model", SPEC, "--model_args", "{width: 3}", "--dataset", "synthetic"], "it accepts: num_classes, hidden"),
        (["--model", SPEC, "--weights", "https://example.com/w.pt", "--dataset", "synthetic"], "remote path"),
        (["--model", SPEC, "--weights", "missing.pt", "--dataset", "synthetic"], "does not exist"),
        (["--model", SPEC, "--dataset", "synthetic", "--binarizer", "bogus"], "--binarizer 'bogus'"),
        (["--model", SPEC, "--dataset", "synthetic", "--normalize", "{mean: [0.5]}"], "exactly the keys mean and std"),
        (["--model", SPEC, "--dataset", "synthetic", "--data", "{in_channels: 3}"], "cannot take the synthetic images"),
    ],
)
def test_bad_any_model_requests_fail_before_any_attack(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       args: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as err:
        eval_main([*args, "--output", str(tmp_path / "r.json"), "--progress", "false"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and msg.startswith("error:") and needle in msg, msg
    assert "Traceback" not in msg and not (tmp_path / "r.json").exists()


def test_results_json_records_the_model(trained: tuple[Net, Path], tmp_path: Path) -> None:
    _run(tmp_path, "--model", SPEC, "--weights", str(trained[1]), "--attacks", "[]",
         "--model_args", "{hidden: 24}")
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["model"] == SPEC and data["model_args"] == {"hidden": 24}
    assert data["binarizer"] is None and data["normalize"] is None and "checkpoint" not in data


# -- bnnrobust evaluate | reproduce | diagnose ------------------------------------------------
@pytest.mark.slow  # four interpreters, each importing Lightning
def test_package_commands_print_their_usage() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    commands = {"evaluate": "usage: bnnrobust evaluate", "reproduce": "usage: bnnrobust reproduce",
                "diagnose": "usage: bnnrobust diagnose", "fit": "--trainer.max_epochs"}
    procs = {cmd: subprocess.Popen([sys.executable, "-m", "bnnrobust", cmd, "--help"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
             for cmd in commands}
    outs = {}
    for cmd, needle in commands.items():
        outs[cmd], err = procs[cmd].communicate(timeout=300)
        assert procs[cmd].returncode == 0, (cmd, err[-2000:])
        assert needle in outs[cmd], (cmd, outs[cmd][:500])
    assert "--weights" in outs["evaluate"] and "--diagnose_n" in outs["diagnose"]
    assert "--out" in outs["reproduce"]


def test_unknown_package_command_names_the_accepted_ones(capsys: pytest.CaptureFixture) -> None:
    from bnnrobust.cli import main

    with pytest.raises(SystemExit) as err:
        main(["evaluat", "--help"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "'evaluat'" in msg
    assert "fit, validate, test, predict, evaluate, reproduce, diagnose" in msg


def test_bnnrobust_evaluate_is_evaluate_py(trained: tuple[Net, Path], tmp_path: Path) -> None:
    from bnnrobust.cli import main

    out = tmp_path / "cmd" / "results.json"
    main(["evaluate", "--model", SPEC, "--weights", str(trained[1]), "--dataset", "synthetic",
          "--n", "16", "--attacks", "[]", "--progress", "false", "--output", str(out)])
    direct = _run(tmp_path, "--model", SPEC, "--weights", str(trained[1]), "--attacks", "[]",
                  "--n", "16")
    assert json.loads(out.read_text())["clean_acc"] == direct["clean_acc"]


def test_bnnrobust_diagnose_runs_the_checklist_without_attacks(
        trained: tuple[Net, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from bnnrobust.evaluation.cli import diagnose_main

    monkeypatch.chdir(tmp_path)
    common = ["--model", SPEC, "--weights", str(trained[1]), "--dataset", "synthetic", "--n", "16",
              "--diagnose_n", "8", "--diagnose_quick", "--progress", "false"]
    diagnose_main(common)
    folder = tmp_path / "logs" / "tests.test_evaluate_any_model_Net" / "eval" / "diagnosis"
    body = json.loads((folder / "results.json").read_text())
    assert body["attacks"] == {} and body["diagnosis"]["verdict"] in ("pass", "warning", "fail")
    diag = json.loads((folder / "results_diagnosis.json").read_text())
    # no attack given: the threat model is the dataset's preset PGD (synthetic: eps 0.1 L∞)
    assert diag["settings"]["eps"] == pytest.approx(0.1) and diag["settings"]["n"] == 8
    assert "Gradient-masking diagnosis" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        diagnose_main([*common, "--no_diagnose"])
    assert err.value.code == 2 and "drop --diagnose false" in capsys.readouterr().err
