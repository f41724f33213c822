"""The masking study runner: resumable stages, computed table and plot (synthetic, toy size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnnrobust.studies import masking


def test_study_writes_each_stage_resumes_and_reports(tmp_path: Path) -> None:
    rows = masking.run_study(tmp_path, ["bc"], n_eval=32, synthetic=True, quick=True)
    assert [(r["run"], r["epoch"]) for r in rows] == [("bc", 1), ("bc", 2)]
    for r in rows:
        assert 0 <= r["pgd"] <= r["clean"] <= 100 and r["n"] == 32
        assert r["best_pp"] == min(r["pgd++njs"], r["pgd++hns"])
        assert r["gap_pgd_minus_pp"] == pytest.approx(r["pgd"] - r["best_pp"])
        assert 0.0 <= r["zero_grad_frac"] <= 1.0 and 0.0 <= r["saturated_frac"] <= 1.0
    ckpt = tmp_path / "ckpt" / "bc" / "epoch2.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    # an interrupted study: the epoch-2 result is lost, its checkpoint is kept
    (tmp_path / "evals" / "bc_e2.json").unlink()
    again = masking.run_study(tmp_path, ["bc"], n_eval=32, synthetic=True, quick=True)
    assert ckpt.stat().st_mtime_ns == stamp  # not retrained
    assert again[1]["clean"] == rows[1]["clean"] and again[1]["pgd"] == rows[1]["pgd"]
    md = masking.report(tmp_path, doc=None)
    assert md.count("\n| bc |") == 2
    assert json.loads((tmp_path / "masking.json").read_text())[0]["run"] == "bc"
    assert (tmp_path / "gap_vs_epochs.png").stat().st_size > 1000


def test_report_fills_only_the_generated_section_of_the_doc_page(tmp_path: Path) -> None:
    evals = tmp_path / "evals"
    evals.mkdir()
    row = {"run": "ref", "varied": "float REF", "line": "none", "epoch": 1, "clean": 90.0,
           "pgd": 5.0, "pgd++njs": 6.0, "pgd++hns": 5.5, "apgd-ce": 4.0, "best_pp": 5.5,
           "gap_pgd_minus_pp": -0.5, "logit_gap": {"p10": 1.0, "median": 5.0, "p90": 9.0},
           "saturated_frac": 0.0, "psi_norm": 0.2, "zero_grad_frac": 0.0}
    (evals / "ref_e1.json").write_text(json.dumps(row))
    doc = tmp_path / "page.md"
    doc.write_text("intro\n<!-- study table: generated -->\nold\n<!-- end of study table -->\nend\n")
    masking.report(tmp_path, doc=doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| ref | float REF | 1 | 90.0 | 5.0 | 6.0 | 5.5 | 4.0 | -0.5 |" in text


def test_unknown_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(masking.StudyError, match="Unknown run.*nope.*accepted: bc"):
        masking.run_study(tmp_path, ["nope"], synthetic=True, quick=True)
