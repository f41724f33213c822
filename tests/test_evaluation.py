"""evaluate.py and bnnrobust.evaluation: schema, invariants, reproducibility, errors, DDP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_models import TinyNet, train_tiny  # noqa: E402

from bnnrobust.attacks import FGSM, PGD  # noqa: E402
from bnnrobust.attacks.factory import build_attack  # noqa: E402
from bnnrobust.attacks.temperature import njs_temperature  # noqa: E402
from bnnrobust.evaluation import (  # noqa: E402
    adv_path,
    eps_sweep,
    evaluate,
    load_system,
    reevaluate,
)
from bnnrobust.evaluation.cli import build_parser, resolve_attacks  # noqa: E402
from bnnrobust.evaluation.cli import main as eval_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """TinyNet trained 3 steps on synthetic data; its YAML also lists test_attacks."""
    folder = tmp_path_factory.mktemp("eval_run")
    return train_tiny(str(folder), network="tiny",
                      test_attacks=["fgsm", {"name": "pgd", "steps": 3}])


@pytest.fixture(scope="module")
def model_and_data(run: tuple[str, str]) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    system, dm = load_system(run[0])
    dm.setup("test")
    x = torch.stack([dm.test_set[i][0] for i in range(len(dm.test_set))])
    y = torch.stack([dm.test_set[i][1] for i in range(len(dm.test_set))])
    return system.model, x, y


def _attacks() -> dict:
    return {
        "fgsm": FGSM(eps=0.1),
        "pgd": PGD(eps=0.1, step_size=0.02, steps=5),
        "pgd++njs": PGD(eps=0.1, step_size=0.02, steps=5, temperature="njs"),
        "pgd++hns": PGD(eps=0.1, step_size=0.02, steps=5, temperature="hns"),
    }


# -- the command line -------------------------------------------------------------------------
def test_cli_json_schema_and_default_output(run: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    ckpt, _ = run
    body = eval_main(["--ckpt", ckpt, "--attacks", "fgsm", "{name: pgd, steps: 5}", "pgd++njs",
                      "pgd++hns", "--n", "40", "--batch-size", "16", "--progress", "false"])
    out_json = Path(ckpt).parents[1] / "eval" / "results.json"  # default: <run>/eval/
    assert out_json.is_file() and out_json.with_suffix(".md").is_file()
    data = json.loads(out_json.read_text())
    assert data == json.loads(json.dumps(body))
    for key in ("clean_acc", "attacks", "n", "seed", "versions", "worst_case_acc", "dataset"):
        assert key in data, key
    assert set(data["versions"]) >= {"torch", "lightning", "torchattacks", "bnnrobust", "python"}
    assert data["n"] == 40 and data["seed"] == 0 and data["dataset"] == "synthetic"
    assert list(data["attacks"]) == ["fgsm", "pgd", "pgd++njs", "pgd++hns"]
    assert 0 < data["clean_acc"] <= 100
    for name, res in data["attacks"].items():
        assert 0 <= res["adv_acc"] <= data["clean_acc"], name
        assert isinstance(res["seconds"], float) and res["seconds"] >= 0
        assert res["config"]["eps"] == pytest.approx(0.1)  # synthetic preset (as fmnist)
        assert res["config"]["norm"] == "linf"
        if "++" in name:
            beta = res["beta"]
            assert beta["count"] == res["attacked"] > 0
            assert beta["min"] <= beta["mean"] <= beta["max"] and beta["std"] >= 0
        else:
            assert res["beta"] is None
    assert data["attacks"]["pgd"]["config"]["steps"] == 5
    assert data["attacks"]["pgd++njs"]["config"]["njs_beta1"] > 0
    assert data["worst_case_acc"] <= min(r["adv_acc"] for r in data["attacks"].values())
    md = out_json.with_suffix(".md").read_text()
    assert "pgd++hns" in md and "| clean |" in md
    printed = capsys.readouterr().out
    assert "pgd++njs" in printed and "clean" in printed


def test_cli_config_file_sweep_save_adv_signal(run: tuple[str, str], tmp_path: Path) -> None:
    ckpt, _ = run
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "attacks: [fgsm, {name: pgd, steps: 3}]\nn: 24\nbatch_size: 12\nseed: 3\nsplit: val\n"
        f"output: {tmp_path / 'out' / 'r.json'}\nsweep: true\nsweep_eps: [0.0, 0.1]\n"
        "sweep_attacks: [fgsm]\nprogress: false\n"
    )
    body = eval_main(["--config", str(cfg), "--ckpt", ckpt, "--save-adv", str(tmp_path / "adv"),
                      "--signal-propagation", "--signal_n", "16"])
    assert body["seed"] == 3 and body["n"] == 24 and body["split"] == "val"
    assert (tmp_path / "out" / "r.json").is_file() and (tmp_path / "out" / "r.md").is_file()
    assert (tmp_path / "out" / "r_sweep.json").is_file() and (tmp_path / "out" / "r_sweep.png").is_file()
    assert set(body["adv_examples"]) == {"fgsm", "pgd"}
    assert Path(body["adv_examples"]["pgd"]).is_file()
    assert "signal_propagation" in body and "Signal propagation" in (tmp_path / "out" / "r.md").read_text()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--attacks", "pgd", "pgd++njs", "--n", "5"], {"attacks": ["pgd", "pgd++njs"], "n": 5}),
        (["--attacks", "[pgd, pgd++njs]"], {"attacks": ["pgd", "pgd++njs"]}),
        (["--attacks", "fgsm", "{name: pgd, steps: 5}"],
         {"attacks": ["fgsm", {"name": "pgd", "steps": 5}]}),
        (["--attacks", "{name: pgd, eps: 0.05}"], {"attacks": [{"name": "pgd", "eps": 0.05}]}),
        (["--preset", "quick", "--signal-propagation"],
         {"attacks": "quick", "signal_propagation": True}),
        (["--sweep-eps", "0.1", "--sweep"], {"sweep_eps": [0.1], "sweep": True}),
        (["--sweep_eps", "0", "0.05", "--no_sweep"], {"sweep_eps": [0.0, 0.05], "sweep": False}),
        (["--sweep_eps", "[0.0, 0.1]", "--sweep", "false"], {"sweep_eps": [0.0, 0.1], "sweep": False}),
        (["--batch-size", "16", "--save-adv", "adv", "--progress", "false"],
         {"batch_size": 16, "save_adv": "adv", "progress": False}),
        (["--diagnose", "--diagnose-quick", "--allow-module", "mypkg"],
         {"diagnose": True, "diagnose_quick": True, "allow_module": ["mypkg"]}),
    ],
)
def test_parser_accepts_the_users_spellings(argv: list[str], expected: dict) -> None:
    cfg = build_parser().parse_args(argv)
    assert {k: cfg[k] for k in expected} == expected


@pytest.mark.parametrize(("argv", "needle"), [
    (["--sweep_eps", "abc"], "'abc' is not a number"),
    (["--attacks", "pgd", "[fgsm]"], "either several values or one YAML list"),
    (["--attacks", "{name: pgd"], "is not valid YAML"),
])
def test_parser_refuses_bad_list_values(argv: list[str], needle: str,
                                        capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(argv)
    assert err.value.code == 2 and needle in capsys.readouterr().err


def test_eval_configs_match_paper_presets() -> None:
    from bnnrobust.attacks.presets import preset_attacks
    from bnnrobust.evaluation.cli import build_parser

    for dataset in ("fmnist", "cifar10", "cifar100"):
        cfg = build_parser().parse_args(["--config", str(ROOT / "configs" / "eval" / f"{dataset}.yaml")])
        assert cfg.dataset == dataset
        ours = {k: a.describe() for k, a in resolve_attacks(cfg.attacks, cfg.dataset).items()}
        paper = {k: a.describe() for k, a in preset_attacks(dataset, "paper").items()}
        assert ours == paper
    cfg = build_parser().parse_args(["--config", str(ROOT / "configs" / "eval" / "fmnist_strongest.yaml")])
    assert "strongest" in resolve_attacks(cfg.attacks, cfg.dataset)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--attacks", "pgd_typo"], "Known names"),
        (["--attacks", "{name: pgd, eps: -0.1}"], "eps"),
    ],
)
def test_cli_bad_attacks(run: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture,
                         args: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", run[0], "--n", "4", "--output", str(tmp_path / "r.json"), *args])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert msg.startswith("error:") and needle in msg
    if needle == "Known names":
        assert "pgd++njs" in msg and "pgd_typo" in msg
    assert not (tmp_path / "r.json").exists()


def test_cli_bad_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert err.value.code == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", str(bad)])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "unreadable" in msg and str(bad) in msg


def test_cli_checkpoint_config_mismatch(run: tuple[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    from helpers_models import write_train_config

    other = write_train_config(str(tmp_path), network="tiny", hidden=7)
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", run[0], "--train_config", other, "--attacks", "fgsm"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "shape mismatches" in msg and "model.1.net.1.weight" in msg


def test_images_outside_unit_range(model_and_data: tuple) -> None:
    model, x, y = model_and_data
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, (x[:8] * 2 - 0.5, y[:8]), {"fgsm": FGSM(eps=0.1)}, progress=False)


def test_bad_eps_in_sweep(model_and_data: tuple) -> None:
    model, x, y = model_and_data
    with pytest.raises(ValueError, match="eps must be >= 0"):
        eps_sweep(model, x[:4], y[:4], ["pgd"], [0.1, -0.1], progress=False)


# -- runner invariants --------------------------------------------------------------------------
def test_robust_le_clean_and_seed_determinism(model_and_data: tuple) -> None:
    model, x, y = model_and_data
    x, y = x[:48], y[:48]
    state = torch.get_rng_state()
    r1 = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    torch.manual_seed(123)  # a different global state must not matter
    r2 = evaluate(model, (x, y), _attacks(), seed=0, batch_size=16, progress=False)
    with torch.no_grad():
        clean = 100 * float((model(x).argmax(1) == y).float().mean())
    assert r1.clean_acc == pytest.approx(clean)
    for name in r1.attacks:
        a, b = r1.attacks[name], r2.attacks[name]
        assert a.correct == b.correct and a.beta == b.beta, name
        assert a.adv_acc <= r1.clean_acc
    assert r1.attacks["pgd"].adv_acc < r1.clean_acc  # the attack does something
    # the attack order does not change an attack's numbers
    rev = dict(reversed(list(_attacks().items())))
    r3 = evaluate(model, (x, y), rev, seed=0, batch_size=16, progress=False)
    assert {k: v.correct for k, v in r3.attacks.items()} == {k: v.correct for k, v in r1.attacks.items()}


def test_njs_calibrated_on_first_100_clean_samples(model_and_data: tuple) -> None:
    model, x, y = model_and_data
    assert x.shape[0] > 100
    res = evaluate(model, (x, y), {"pgd++njs": PGD(eps=0.1, step_size=0.05, steps=2, temperature="njs")},
                   n=110, batch_size=64, progress=False)
    expected = njs_temperature(model, x[:100], 100)
    assert res.attacks["pgd++njs"].config["njs_beta1"] == pytest.approx(expected, rel=1e-5)
    assert res.attacks["pgd++njs"].config["temperature"]["beta1"] == pytest.approx(expected, rel=1e-5)


def test_loader_and_tensors_agree(run: tuple[str, str], model_and_data: tuple) -> None:
    model, x, y = model_and_data
    _, dm = load_system(run[0], data_overrides={"batch_size": 16})
    dm.setup("test")
    atk = {"pgd": PGD(eps=0.1, step_size=0.02, steps=3)}
    a = evaluate(model, dm.test_dataloader(), atk, n=40, progress=False)
    b = evaluate(model, (x[:40], y[:40]), atk, batch_size=16, progress=False)
    assert a.n == b.n == 40 and a.batch_size == 16
    assert a.clean_correct == b.clean_correct and a.attacks["pgd"].correct == b.attacks["pgd"].correct


def test_save_adv_and_reevaluate(model_and_data: tuple, tmp_path: Path) -> None:
    model, x, y = model_and_data
    x, y = x[:40], y[:40]
    res = evaluate(model, (x, y), _attacks(), seed=1, batch_size=16, progress=False, save_adv=tmp_path)
    for name, atk_res in res.attacks.items():
        path = adv_path(tmp_path, name)
        blob = torch.load(path, weights_only=True)
        assert blob["attack"] == name and torch.equal(blob["y"], y)
        assert torch.equal(blob["indices"], torch.arange(40))
        assert blob["x_adv"].min() >= 0 and blob["x_adv"].max() <= 1
        assert (blob["x_adv"] - x).abs().max() <= 0.1 + 1e-6
        assert reevaluate(model, path, batch_size=7) == pytest.approx(atk_res.adv_acc)
    with pytest.raises(FileNotFoundError):
        reevaluate(model, tmp_path / "none.pt")


def test_sweep_json_png_monotone(model_and_data: tuple, tmp_path: Path) -> None:
    model, x, y = model_and_data
    x, y = x[:48], y[:48]
    eps = [0.0, 0.02, 0.05, 0.1, 0.3]
    res = eps_sweep(model, x, y, ["pgd", {"name": "fgsm"}], eps, dataset="fmnist", seed=0,
                    batch_size=24, json_path=tmp_path / "s.json", png_path=tmp_path / "s.png",
                    progress=False)
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pgd = res["attacks"]["pgd"]["adv_acc"]
    assert pgd[0] == res["clean_acc"] > 50.0
    assert all(b <= a for a, b in zip(pgd, pgd[1:], strict=False)), pgd
    assert pgd[-1] < pgd[0] and "pgd" not in res["non_monotone"]
    assert res["attacks"]["pgd"]["config"]["eps"] == pytest.approx(0.02)


def test_build_attack_names_are_result_keys(model_and_data: tuple) -> None:
    model, x, y = model_and_data
    attacks = resolve_attacks(["fgsm", {"name": "pgd", "eps": 0.05, "steps": 2, "label": "pgd_small"}],
                              "synthetic")
    assert list(attacks) == ["fgsm", "pgd_small"]
    res = evaluate(model, (x[:8], y[:8]), attacks, progress=False)
    assert res.attacks["pgd_small"].config["eps"] == pytest.approx(0.05)
    assert build_attack("pgd", dataset="synthetic").name == "pgd"


# -- LightningCLI test path -------------------------------------------------------------------
def test_same_attacks_through_lightning_cli_test(run: tuple[str, str]) -> None:
    """The training YAML's test_attacks run in ``python -m bnnrobust test`` → test/<attack>_acc."""
    from bnnrobust.cli import BNNRobustCLI

    ckpt, config = run
    cli = BNNRobustCLI(args=["test", "--config", config, "--ckpt_path", ckpt,
                             "--trainer.logger", "false", "--trainer.limit_test_batches", "1"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"test/clean_acc", "test/fgsm_acc", "test/pgd_acc"} <= set(metrics)
    assert 0 <= metrics["test/pgd_acc"] <= 1 and 0 <= metrics["test/fgsm_acc"] <= 1


# -- several processes ------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TinyNet(num_classes=4, in_channels=1, image_size=4, hidden=8).eval()
        x = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            y = model(x).argmax(1)
        y[::5] = (y[::5] + 1) % 4
        res = evaluate(model, (x, y), _ddp_attacks(), seed=0, batch_size=8, progress=False,
                       save_adv=Path(out_dir) / "adv")
        if rank == 0:
            (Path(out_dir) / "ddp.json").write_text(json.dumps(res.to_dict()))
    finally:
        dist.destroy_process_group()


def _ddp_attacks() -> dict:
    return {"pgd": PGD(eps=0.1, step_size=0.03, steps=3),
            "pgd++hns": PGD(eps=0.1, step_size=0.03, steps=3, temperature="hns")}


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    torch.manual_seed(0)
    model = TinyNet(num_classes=4, in_channels=1, image_size=4, hidden=8).eval()
    x = torch.rand(37, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    single = evaluate(model, (x, y), _ddp_attacks(), seed=0, batch_size=8, progress=False).to_dict()
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["n"] == single["n"] == 37
    assert ddp["clean_correct"] == single["clean_correct"]
    assert ddp["worst_case_acc"] == single["worst_case_acc"]
    for name in single["attacks"]:
        a, b = ddp["attacks"][name], single["attacks"][name]
        assert (a["correct"], a["attacked"], a["adv_acc"]) == (b["correct"], b["attacked"], b["adv_acc"])
        if b["beta"] is not None:
            assert a["beta"]["count"] == b["beta"]["count"]
            assert a["beta"]["mean"] == pytest.approx(b["beta"]["mean"], rel=1e-9)
            assert a["beta"]["min"] == b["beta"]["min"] and a["beta"]["max"] == b["beta"]["max"]
    blob = torch.load(adv_path(tmp_path / "adv", "pgd"), weights_only=True)
    assert torch.equal(blob["indices"], torch.arange(37))  # gathered from both ranks, in order
    assert reevaluate(model, adv_path(tmp_path / "adv", "pgd")) == pytest.approx(ddp["attacks"]["pgd"]["adv_acc"])


def test_eps_sweep_refuses_an_attack_without_an_eps_budget() -> None:
    from bnnrobust.evaluation.sweep import eps_sweep

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="no eps budget"):
        eps_sweep(model, x, y, ["pgd", "deepfool"], [0.0, 0.1])


def test_cli_transfer_attack_from_a_checkpoint(run: tuple[str, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """Fig. 1c in one config: a transfer source given as a checkpoint path."""
    ckpt, _ = run
    pgd = "{name: pgd, steps: 4, random_start: false}"
    out = tmp_path / "r.json"
    body = eval_main(["--ckpt", ckpt, "--n", "24", "--batch-size", "8", "--progress", "false",
                      "--output", str(out), "--attacks", pgd,
                      f"{{name: transfer, source: {ckpt}, attack: {pgd}}}"])
    attacks = body["attacks"]
    assert list(attacks) == ["pgd", "transfer(pgd)"]
    # crafted on the same network without randomness: exactly the white-box result
    assert attacks["transfer(pgd)"]["adv_acc"] == attacks["pgd"]["adv_acc"]
    assert attacks["transfer(pgd)"]["config"]["attack"]["steps"] == 4
    # resolve_attacks loads each source path once, through the given loader
    loaded: list[str] = []

    def loader(path: str) -> torch.nn.Module:
        loaded.append(path)
        return TinyNet()

    built = resolve_attacks([{"name": "transfer", "source": "a.ckpt"},
                             {"name": "transfer", "source": "a.ckpt", "attack": "fgsm",
                              "label": "transfer_fgsm"}], "synthetic", load_source=loader)
    assert list(built) == ["transfer(pgd)", "transfer_fgsm"] and loaded == ["a.ckpt"]
    # a source that cannot be loaded: a clear error before any attack runs
    with pytest.raises(SystemExit) as err:
        eval_main(["--ckpt", ckpt, "--n", "4", "--output", str(tmp_path / "bad.json"),
                   "--attacks", f"{{name: transfer, source: {tmp_path / 'none.ckpt'}}}"])
    assert err.value.code == 2
    assert "transfer source" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs 'source'"):
        build_attack({"name": "transfer", "attack": "pgd"})
    with pytest.raises(ValueError, match="Unknown argument 'eps' for attack 'transfer'"):
        build_attack({"name": "transfer", "source": TinyNet(), "eps": 0.1})
