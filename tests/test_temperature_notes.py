"""Where PGD++ is weaker than PGD, the report, the monitor and the diagnosis say so."""

from __future__ import annotations

from bnnrobust.evaluation.report import format_table, markdown_table, weaker_temperature_notes
from bnnrobust.evaluation.runner import AttackResult, EvalResult


def _result(accs: dict[str, float]) -> EvalResult:
    attacks = {name: AttackResult(name, acc, int(acc), 100, 1.0, 80, None, {"eps": 0.1, "norm": "linf"})
               for name, acc in accs.items()}
    return EvalResult(100, 0, 100, "cpu", 1, 80.0, 80, attacks, min(accs.values()), 3.0)


def test_notes_name_each_weaker_tempered_attack_and_its_base() -> None:
    notes = weaker_temperature_notes({"pgd": 5.0, "pgd++njs": 7.0, "pgd++hns": 4.0,
                                      "apgd-ce": 2.0, "apgd-ce++njs": 2.5, "fgsm++hns": 9.0})
    assert len(notes) == 2
    assert notes[0].startswith("pgd++njs is weaker than pgd (7.0 % vs 5.0 %)")
    assert "lowered the gradient signal" in notes[0]
    assert notes[1].startswith("apgd-ce++njs is weaker than apgd-ce")
    # equal, stronger, within min_gap, or without a base attack: nothing to say
    assert weaker_temperature_notes({"pgd": 5.0, "pgd++njs": 5.0, "pgd++hns": 1.0}) == []
    assert weaker_temperature_notes({"pgd": 5.0, "pgd++njs": 5.5}, min_gap=1.0) == []
    assert weaker_temperature_notes({"pgd++njs": 50.0}) == []


def test_report_tables_carry_the_note() -> None:
    weaker = _result({"pgd": 5.0, "pgd++njs": 7.0})
    assert "note: pgd++njs is weaker than pgd" in format_table(weaker)
    assert "* pgd++njs is weaker than pgd" in markdown_table(weaker)
    stronger = _result({"pgd": 9.0, "pgd++njs": 2.0})
    assert "weaker" not in format_table(stronger) + markdown_table(stronger)
