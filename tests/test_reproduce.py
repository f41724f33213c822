"""``python -m bnnrobust.reproduce``: the toy-size pipeline end to end, resuming, refusing.

One ``--quick`` run (module fixture) on the real Fashion-MNIST files when installed, else on
the synthetic data module; the other tests read its outputs, rerun it, or test the pure
helpers (peer check, findings) on hand-made numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bnnrobust import reproduce as R

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = all((FMNIST_DIR / f"{stem}.gz").is_file() for stem in (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte"))


def _ckpt_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted((out / "runs").rglob("*.ckpt"))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], bool]:
    out = tmp_path_factory.mktemp("repro") / "fmnist"
    synthetic = not HAVE_FMNIST  # real Fashion-MNIST files when installed
    summary = R.run(out, quick=True, synthetic=synthetic, progress=False, step_seconds=1e-3)
    return out, summary, synthetic


def _expected_attacks(key: str, settings: R.Settings) -> set[str]:
    names = {k for k, _ in R.ATTACK_ROWS}
    if key not in settings.peer_check_models:
        names.discard("apgd-t")
    if key == R.REF_KEY:
        names.discard("transfer_pgd")
    return names


def test_quick_run_writes_every_output(quick_run: tuple[Path, dict[str, Any], bool]) -> None:
    out, summary, synthetic = quick_run
    settings = R.Settings.quick(synthetic)
    manifest = json.loads((out / R.MANIFEST).read_text())
    assert manifest["status"] == "complete"
    assert manifest["settings"] == settings.to_dict()
    assert set(manifest["stage_seconds"]) == {st.key for st in R.plan_stages(
        R.Context(out, settings, out / "results.md", False))}
    for spec in R.MODELS:
        assert (out / "runs" / spec.key / "checkpoints" / "last.ckpt").is_file()
        body = json.loads((out / f"eval_{spec.key}.json").read_text())
        assert body["n"] == settings.n_eval and body["model"] == spec.key
        assert set(body["attacks"]) == _expected_attacks(spec.key, settings), spec.key
        for name, res in body["attacks"].items():
            assert 0.0 <= res["adv_acc"] <= body["clean_acc"] + 1e-9, (spec.key, name)
        assert (out / f"eval_{spec.key}.md").is_file()
    signal = json.loads((out / "signal_propagation.json").read_text())
    assert set(signal["models"]) == {m.key for m in R.MODELS}
    for entry in signal["models"].values():
        assert set(entry["variants"]) == {"original", "njs", "hns"}
        assert "zero_grad_frac" in entry["variants"]["original"]["summary"]
    for key in settings.sweep_models:
        sweep = json.loads((out / f"sweep_{key}.json").read_text())
        assert sweep["eps"] == list(settings.sweep_eps)
        assert set(sweep["attacks"]) == set(R.SWEEP_ATTACKS)
        assert (out / f"sweep_{key}.png").stat().st_size > 1000
    assert (out / "sweep_pgd_vs_pgdpp.png").is_file()
    rho = json.loads((out / "rho_ablation.json").read_text())
    assert rho["n"] == settings.rho_n
    for rule, (rhos, keys) in R.RHO_ABLATIONS.items():
        assert rho["rho"][rule] == list(rhos)
        for key in keys:
            entry = rho["models"][key]
            assert len(entry[rule]) == len(rhos)
            assert all(0.0 <= v <= entry["clean_acc"] + 1e-9 for v in entry[rule]), (rule, key)
    peers = json.loads((out / "peer_check.json").read_text())
    assert set(peers["models"]) == set(settings.peer_check_models)
    for entry in peers["models"].values():
        assert set(entry["peers"]) == set(R.PEERS)
        assert entry["ok"] in (True, False)  # measured, every number present
    saved = json.loads((out / "summary.json").read_text())
    assert saved.keys() >= {"settings", "accuracy", "findings", "verdicts", "peer_check_ok"}
    assert saved["accuracy"] == summary["accuracy"]
    assert set(saved["accuracy"]) == {m.key for m in R.MODELS}
    assert saved["findings"] and all(f["verdict"] in R.VERDICTS for f in saved["findings"])


def test_markdown_has_every_attack_row_and_links(quick_run: tuple[Path, dict[str, Any], bool]) -> None:
    out, _, synthetic = quick_run
    s = R.Settings.quick(synthetic)
    md = (out / "results.md").read_text()
    for _, label in R.ATTACK_ROWS:
        row = "| " + label.format(S=s.apgd_steps, Q=s.square_queries, R=s.restarts) + " |"
        assert row in md, row
    for spec in R.MODELS:
        assert spec.label in md
    for heading in ("## Findings", "## Signal propagation", "## Accuracy vs eps",
                    "## Peer check", "## PGD++ with varying ρ", "| Table 11 |", "| Table 13 |",
                    "python -m bnnrobust.reproduce --out results/fmnist"):
        assert heading in md
    # links are relative to the Markdown file and point to files that exist
    for target in ("sweep_pgd_vs_pgdpp.png", "signal_propagation.json", "peer_check.json"):
        assert f"({target})" in md and (out / target).is_file()
    # numbers in the table are the JSON's
    ref = json.loads((out / "eval_ref.json").read_text())
    assert f"{ref['attacks']['pgd']['adv_acc']:.2f}" in md


def test_rerun_without_force_refuses(quick_run: tuple[Path, dict[str, Any], bool],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, _, synthetic = quick_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(R.ReproError, match="complete reproduction.*--force"):
        R.run(out, quick=True, synthetic=synthetic, progress=False, step_seconds=1e-3)
    argv = ["--out", str(out), "--quick", "--no-progress"] + (["--synthetic"] if synthetic else [])
    assert R.main(argv) == 2
    assert "--force" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing touched


def test_other_settings_refused(quick_run: tuple[Path, dict[str, Any], bool]) -> None:
    out, _, synthetic = quick_run
    with pytest.raises(R.ReproError, match="other settings"):
        R.run(out, quick=True, synthetic=not synthetic, progress=False, step_seconds=1e-3)
    with pytest.raises(R.ReproError, match="other settings"):
        R.run(out, quick=False, synthetic=synthetic, progress=False, step_seconds=1e-3)


def test_rerun_after_deleting_an_eval_reuses_checkpoints(
        quick_run: tuple[Path, dict[str, Any], bool], capsys: pytest.CaptureFixture[str]) -> None:
    out, _, synthetic = quick_run
    ckpts = _ckpt_mtimes(out)
    assert len(ckpts) >= len(R.MODELS)
    kept = {k: (out / f"eval_{k}.json").stat().st_mtime_ns for k in ("ref", "adv_ref")}
    victim = out / "eval_waq_hubara.json"
    victim.unlink()
    capsys.readouterr()
    R.run(out, quick=True, synthetic=synthetic, progress=False, step_seconds=1e-3)
    log = capsys.readouterr().out
    assert victim.is_file()
    assert _ckpt_mtimes(out) == ckpts  # no training happened
    manifest = json.loads((out / R.MANIFEST).read_text())
    assert manifest["trained_in_last_invocation"] == []
    for key, mtime in kept.items():  # other evaluations reused too
        assert (out / f"eval_{key}.json").stat().st_mtime_ns == mtime
    assert "train REF (configs/fmnist/convnet_ref.yaml): reused" in log
    assert "evaluate BNN-WAQ (Hubara)" in log and "ETA" in log


def test_training_stage_checks_the_checkpoint(quick_run: tuple[Path, dict[str, Any], bool]) -> None:
    out, _, synthetic = quick_run
    ctx = R.Context(out, R.Settings.quick(synthetic), out / "results.md", False)
    stage = next(st for st in R.plan_stages(ctx) if st.key == "train/ref")
    assert R._stage_done(ctx, stage) == (True, "finished earlier")
    marker = ctx.marker("train/ref")
    original = marker.read_text()
    body = json.loads(original)
    body["result"]["global_step"] += 5  # the checkpoint no longer matches the finished run
    marker.write_text(json.dumps(body))
    try:
        done, why = R._stage_done(ctx, stage)
        assert not done and "step" in why
    finally:
        marker.write_text(original)


def test_foreign_folder_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(R.ReproError, match="not a reproduction folder"):
            R.run(tmp_path, quick=True, synthetic=True, force=force, progress=False,
                  step_seconds=1e-3)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_force_starts_from_scratch(tmp_path: Path) -> None:
    s = R.Settings.quick(True)
    out = tmp_path / "out"
    R._prepare_out(out, s, force=False)
    (out / "eval_ref.json").write_text("{}")
    with pytest.raises(R.ReproError, match="other settings"):
        R._prepare_out(out, R.Settings.quick(False), force=False)
    manifest = R._prepare_out(out, R.Settings.quick(False), force=True)
    assert not (out / "eval_ref.json").exists()
    assert manifest["settings"] == R.Settings.quick(False).to_dict()


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    plan = R.run(out, synthetic=True, dry_run=True, step_seconds=4e-4)
    assert not out.exists()
    text = capsys.readouterr().out
    n = len(plan["plan"])
    assert "total to run" in text and f"{n}/{n}" in text
    assert set(plan["plan"]) == {f"train/{m.key}" for m in R.MODELS} | {
        f"eval/{m.key}" for m in R.MODELS} | {"signal", "rho", "clever", "peer_check", "report"} | {
        f"sweep/{k}" for k in R.Settings.full().sweep_models}
    assert all(v > 0 for v in plan["plan"].values())


def _evals(values: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {k: {"clean_acc": v.get("clean", 90.0),
                "attacks": {a: {"adv_acc": acc} for a, acc in v.items() if a != "clean"}}
            for k, v in values.items()}


def test_peer_check_detects_a_violation() -> None:
    good = {"strongest": 1.0, "apgd-ce": 3.0, "apgd-dlr": 1.0, "apgd-t": 2.0, "square": 9.0}
    bad = dict(good, **{"apgd-t": 0.5})
    res = R.peer_check(_evals({"a": good, "b": bad}), ["a", "b"])
    assert res["models"]["a"]["ok"] is True
    assert res["models"]["b"]["ok"] is False
    assert res["models"]["b"]["peers"]["apgd-t"] == {"adv_acc": 0.5, "ok": False, "margin": -0.5}
    assert res["ok"] is False
    missing = R.peer_check(_evals({"a": {"strongest": 1.0, "apgd-ce": 2.0}}), ["a"])
    assert missing["ok"] is None and set(missing["models"]["a"]["missing"]) == {
        "apgd-dlr", "apgd-t", "square"}


def test_findings_are_computed_from_the_numbers() -> None:
    agree = _evals({"wq_md_tanh_s": {"pgd": 40.0, "pgd++njs": 3.0, "pgd++hns": 5.0}})
    f = [x for x in R.findings(agree, None, {}, None) if "PGD++ L∞ lowers BNN-WQ (MD" in x.claim]
    assert len(f) == 1 and f[0].verdict == "agrees" and "37.00 points lower" in f[0].ours
    differ = _evals({"wq_md_tanh_s": {"pgd": 10.0, "pgd++njs": 12.0, "pgd++hns": 11.0}})
    f = [x for x in R.findings(differ, None, {}, None) if "PGD++ L∞ lowers BNN-WQ (MD" in x.claim]
    assert f[0].verdict == "differs"
    absent = [x for x in R.findings({}, None, {}, None) if "PGD++ L∞ lowers" in x.claim]
    assert absent and all(x.verdict == "not measured" for x in absent)
    floor = _evals({"wq_md_tanh_s": {"pgd": 0.5, "pgd++njs": 0.0, "pgd++hns": 0.0}})
    f = [x for x in R.findings(floor, None, {}, None) if "PGD++ L∞ lowers BNN-WQ (MD" in x.claim]
    assert f[0].verdict == "not testable"
    sweep = {"wq_md_tanh_s": {"eps": [0.0, 0.1], "n": 10, "non_monotone": [], "attacks": {
        "pgd": {"adv_acc": [80.0, 30.0]}, "pgd++njs": {"adv_acc": [80.0, 10.0]},
        "pgd++hns": {"adv_acc": [80.0, 12.0]}}}}
    f = [x for x in R.findings({}, None, sweep, None) if x.topic == "Tables 2, 3 (sweep)"]
    assert len(f) == 1 and f[0].verdict == "agrees" and "eps 0.1" in f[0].claim
    sweeps = {"ref": {"non_monotone": ["pgd"]}}
    f = [x for x in R.findings({}, None, sweeps, None) if x.topic == "Fig. 1b"]
    assert f[0].verdict == "differs"


def test_rho_findings_are_computed_from_the_numbers() -> None:
    rhos = list(R.RHO_ABLATIONS["prop1"][0])
    body = {"rho": {"njs": list(R.RHO_ABLATIONS["njs"][0]), "prop1": rhos}, "models": {
        "waq_hubara": {"label": "W", "clean_acc": 80.0, "njs": [5.0, 4.0, 4.5, 4.0, 6.5, 5.0]},
        "ref": {"label": "R", "clean_acc": 90.0, "njs": [0.0] * 6,
                "prop1": [20.0, 0.5, 0.0, 0.0, 0.0, 1.5]},
        "adv_ref": {"label": "A", "clean_acc": 70.0, "prop1": [40.0, 39.0, 39.5, 45.0, 46.0, 50.0]},
        "adv_wq_md_tanh_s": {"label": "B", "clean_acc": 60.0,
                             "prop1": [40.0, 41.0, 40.0, 39.0, 39.5, 39.0]},
    }}
    found = R.rho_findings(body)

    def verdict(topic: str, label: str) -> R.Finding:
        hits = [f for f in found if f.topic == topic and f" {label} " in f.claim + " "]
        assert len(hits) == 1, (topic, label, [f.claim for f in found])
        return hits[0]

    assert verdict("Table 11", "BNN-WAQ (Hubara)").verdict == "partly agrees"  # spread 2.5
    assert "spread 2.50" in verdict("Table 11", "BNN-WAQ (Hubara)").ours
    assert verdict("Table 11", "REF").verdict == "agrees"
    assert all(f.claim.find("BNN-WQ (MD-tanh-S)") < 0 for f in found if f.topic == "Table 11")
    assert verdict("Table 13", "REF* (adv.),").verdict == "agrees"  # 50 at rho 0.5 vs best 39
    assert "(+11.00)" in verdict("Table 13", "REF* (adv.),").ours
    assert verdict("Table 13", "BNN-WQ* (adv., MD-tanh-S),").verdict == "differs"  # no rise
    assert verdict("Table 13", "REF,").verdict == "partly agrees"  # 1.5 % at rho 0.5
    assert R.rho_findings(None) == []
    broken = {"rho": body["rho"], "models": {"adv_ref": {"label": "A", "clean_acc": 50.0,
                                                        "prop1": [0.0, 0.2, 0.0, 0.0, 0.1, 0.0]}}}
    (only,) = R.rho_findings(broken)
    assert only.verdict == "not testable" and "0.20 or less at every ρ" in only.ours


def test_paper_numbers_are_percentages() -> None:
    for model, row in R.PAPER.items():
        assert model in {m.key for m in R.MODELS}
        for attack, value in row.items():
            assert attack == "clean" or attack in {k for k, _ in R.ATTACK_ROWS}
            assert value is None or (0.0 <= value <= 100.0 and not math.isnan(value))


@pytest.mark.parametrize("spec", [m for m in R.MODELS if m.zoo], ids=lambda m: m.key)
def test_zoo_checkpoints_match_the_recipes(spec: R.ModelSpec) -> None:
    """--zoo reuses a zoo checkpoint only where its recorded network, data and epoch are the recipe's."""
    import torch

    from bnnrobust import zoo

    cfg = R.training_config(spec, R.Settings.full(zoo=True))
    ckpt = torch.load(zoo.path(spec.zoo), map_location="cpu", weights_only=True)
    epochs = int(cfg["trainer"]["max_epochs"])
    assert R._zoo_mismatch(ckpt, cfg, epochs) is None
    assert "epoch" in (R._zoo_mismatch(ckpt, cfg, epochs + 1) or "")
    cfg["model"]["init_args"]["model"]["init_args"]["width"] = 0.5
    assert "width = 1.0, the recipe sets 0.5" in (R._zoo_mismatch(ckpt, cfg, epochs) or "")


def test_zoo_refused_with_quick_or_synthetic(tmp_path: Path) -> None:
    with pytest.raises(R.ReproError, match="--zoo"):
        R.run(tmp_path / "x", quick=True, zoo=True)
    assert not (tmp_path / "x").exists()


def test_the_full_fmnist_run_reuses_the_zoo_unless_told_to_retrain() -> None:
    from bnnrobust.reproduce.cli import build_parser

    assert R.Settings.full().zoo and not R.Settings.full(synthetic=True).zoo
    assert not R.Settings.full(zoo=False).zoo
    parse = build_parser().parse_args
    assert parse(["--out", "x"]).zoo is None          # run() decides: zoo for the full run
    assert parse(["--out", "x", "--zoo"]).zoo is True
    assert parse(["--out", "x", "--retrain"]).zoo is False
    with pytest.raises(SystemExit):
        parse(["--out", "x", "--zoo", "--retrain"])


def test_progress_eta_ignores_stages_planned_at_seconds() -> None:
    """A reused zoo checkpoint (planned 5 s, spent 0 s) must not turn a 2-hour ETA into seconds."""
    from bnnrobust.reproduce.stages import speed_ratio

    assert speed_ratio([]) == 1.0
    assert speed_ratio([(5.0, 0.0), (5.0, 0.01)]) == 1.0
    assert speed_ratio([(5.0, 0.0), (100.0, 150.0), (300.0, 450.0)]) == pytest.approx(1.5)


def test_training_config_drops_the_monitor_and_reads_the_converged_recipe() -> None:
    spec = next(m for m in R.MODELS if m.key == R.WQ_KEY)
    cfg = R.training_config(spec, R.Settings.full())
    assert cfg["trainer"]["max_epochs"] == 10
    names = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert names and not any(n.endswith("RobustnessMonitor") for n in names)


def test_clever_findings_are_computed_from_the_scores() -> None:
    def body(orig: float, njs: float, hns: float) -> dict[str, Any]:
        summ = {k: {"mean": v, "median": v, "n": 5}
                for k, v in {"original": orig, "heuristic": orig, "njs": njs, "hns": hns}.items()}
        return {"label": "X", "summary": summ, "n_scored": 5}

    found = R.clever_findings({"models": {"wq_md_tanh_s": body(1.0, 0.5, 0.6),
                                          "waq_hubara": body(1.0, 1.0, 1.0)}})
    assert [f.verdict for f in found] == ["agrees", "differs"]
    assert "0.8585" in found[0].paper and "-50.0 %" not in found[0].ours
    assert "+50.0 %" in found[0].ours
    assert R.clever_findings(None) == []


def test_an_interrupted_evaluation_stage_resumes_at_its_first_unfinished_attack(
        quick_run: tuple[Path, dict[str, Any], bool], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from bnnrobust.attacks.base import Attack, AttackOutput
    from bnnrobust.reproduce import suite

    src, _, synthetic = quick_run
    out = tmp_path / "fmnist"
    shutil.copytree(src, out)  # the module's run stays as it is for the other tests
    ctx = R.Context(out, R.Settings.quick(synthetic), out / "results.md", False)
    # the toy networks classify few samples; attacks only run on clean-correct ones
    spec = max((m for m in R.MODELS if not m.adversarial),
               key=lambda m: json.loads((out / f"eval_{m.key}.json").read_text())["clean_acc"])
    assert json.loads((out / f"eval_{spec.key}.json").read_text())["clean_acc"] > 0
    stage = next(st for st in R.plan_stages(ctx) if st.key == f"eval/{spec.key}")
    calls: list[str] = []

    class Wrapped(Attack):
        def __init__(self, inner: Attack, fail: bool) -> None:
            super().__init__(surrogate=None, seed=None)
            self.inner, self.fail, self.name = inner, fail, inner.name

        def describe(self) -> dict[str, object]:
            return self.inner.describe()

        def perturb(self, model: Any, x: Any, y: Any) -> AttackOutput:
            calls.append(self.name)
            if self.fail:
                raise RuntimeError("the machine went away")
            return self.inner.perturb(model, x, y)

        def _perturb(self, model: Any, x: Any, y: Any, generator: Any) -> AttackOutput:
            raise AssertionError("perturb is overridden")

    real = suite.attack_suite

    def failing_second(spec: Any, settings: Any, ref: Any) -> dict[str, Any]:
        attacks = real(spec, settings, ref)
        return {k: Wrapped(a, fail=i == 1) for i, (k, a) in enumerate(attacks.items())}

    monkeypatch.setattr(suite, "attack_suite", failing_second)
    with pytest.raises(RuntimeError, match="went away"):
        stage.run()
    partial = out / f"eval_{spec.key}.partial.json"
    ref = ctx.model(R.REF_KEY) if spec.key != R.REF_KEY else None
    first = next(iter(real(spec, ctx.settings, ref)))
    assert partial.is_file() and list(json.loads(partial.read_text())["attacks"]) == [first]

    def counting(spec: Any, settings: Any, ref: Any) -> dict[str, Any]:
        return {k: Wrapped(a, fail=False) for k, a in real(spec, settings, ref).items()}

    monkeypatch.setattr(suite, "attack_suite", counting)
    calls.clear()
    ctx2 = R.Context(out, R.Settings.quick(synthetic), out / "results.md", False)
    next(st for st in R.plan_stages(ctx2) if st.key == f"eval/{spec.key}").run()
    assert first not in calls and calls  # the finished attack was not run again
    assert not partial.exists()
    body = json.loads((out / f"eval_{spec.key}.json").read_text())
    assert set(body["attacks"]) == _expected_attacks(spec.key, ctx.settings)
