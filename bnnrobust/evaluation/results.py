"""What :func:`bnnrobust.evaluation.runner.evaluate` produces: the result containers and the
files of adversarial examples.

:class:`EvalResult` holds the clean accuracy and one :class:`AttackResult` per attack
(definitions of the accuracies: :mod:`bnnrobust.evaluation.runner`); ``to_dict()`` is the JSON
body of a report. With ``evaluate(save_adv=folder)`` each attack's adversarial images are
written to :func:`adv_path` ``(folder, attack)`` by :func:`save_adv_examples`, and
:func:`reevaluate` scores a model on such a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import eval_mode
from bnnrobust.evaluation.accounting import BetaStats, worst_case
from bnnrobust.metrics.intervals import wilson_interval_percent

__all__ = [
    "AttackResult",
    "EvalResult",
    "adv_path",
    "jsonable",
    "reevaluate",
    "result_fields",
    "result_from_fields",
    "save_adv_examples",
]


# -- result containers ------------------------------------------------------------------------
@dataclass
class AttackResult:
    """One attack's outcome.

    Attributes:
        name: attack name (``"pgd++njs"``, ...), the key of the attack dict.
        adv_acc: adversarial accuracy in percent of ``n`` (see :mod:`bnnrobust.evaluation.runner`).
        correct: number of robust samples.
        n: number of evaluated samples.
        seconds: wall-clock seconds spent in the attack (max over ranks).
        attacked: number of samples attacked (clean-correct ones).
        beta: β statistics, or None for attacks without a temperature.
        config: the attack's ``describe()`` (eps in [0, 1] pixel units, norm, steps, ...).
    """

    name: str
    adv_acc: float
    correct: int
    n: int
    seconds: float
    attacked: int
    beta: BetaStats | None
    config: dict[str, Any]


@dataclass
class EvalResult:
    """Everything :func:`~bnnrobust.evaluation.runner.evaluate` measured; ``to_dict()`` is the
    JSON body of a report."""

    n: int
    seed: int
    batch_size: int
    device: str
    world_size: int
    clean_acc: float
    clean_correct: int
    attacks: dict[str, AttackResult]
    worst_case_acc: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: (n,) bool: sample i is classified correctly (clean)
    clean_mask: Tensor | None = field(default=None, repr=False)
    #: per attack, (n,) bool: sample i is correct clean and after the attack
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def robust_mask(self) -> Tensor | None:
        """(n,) bool: correct clean and under every attack (the per-sample worst case)."""
        if self.clean_mask is None:
            return None
        return worst_case(self.clean_mask, list(self.masks.values()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON body; ``clean_ci95``, each attack's ``ci95`` and ``worst_case_ci95`` are
        Wilson 95 % intervals ``[low %, high %]`` of the counts (None without samples)."""
        out = {k: getattr(self, k) for k in ("n", "seed", "batch_size", "device", "world_size",
                                             "clean_acc", "clean_correct")}
        out["clean_ci95"] = _ci95(self.clean_correct, self.n)
        out["attacks"] = {name: {**asdict(res), "ci95": _ci95(res.correct, res.n)}
                          for name, res in self.attacks.items()}
        out["worst_case_acc"] = self.worst_case_acc
        out["worst_case_ci95"] = None
        if self.worst_case_acc is not None:
            robust = self.robust_mask
            # worst_case_acc = 100 * count / n exactly, so the count is recovered by rounding
            count = int(robust.sum()) if robust is not None and self.masks \
                else round(self.worst_case_acc * self.n / 100.0)
            out["worst_case_ci95"] = _ci95(count, self.n)
        out["seconds"] = self.seconds
        out.update(self.extra)
        return jsonable(out)


def result_fields(result: AttackResult) -> dict[str, Any]:
    """``result``'s fields without ``config`` (``beta`` as a dict): what
    :class:`~bnnrobust.evaluation.partial.PartialResults` stores of a finished attack."""
    fields = asdict(result)
    fields.pop("config")
    return fields


def result_from_fields(fields: dict[str, Any], config: dict[str, Any]) -> AttackResult:
    """The :class:`AttackResult` of :func:`result_fields` ``fields`` and ``config`` (``beta``
    is popped from ``fields``)."""
    beta = fields.pop("beta", None)
    return AttackResult(**{**fields, "beta": BetaStats(**beta) if beta else None,
                           "config": config})


def _ci95(correct: int, n: int) -> list[float] | None:
    """Wilson 95 % interval of ``correct / n`` in percent, ``[low, high]``; None if ``n < 1``."""
    if n < 1 or not 0 <= correct <= n:
        return None
    return list(wilson_interval_percent(int(correct), int(n)))


def jsonable(obj: Any) -> Any:
    """Round-trip through JSON (tuples → lists, tensors/enums → numbers/strings)."""
    def default(o: Any) -> Any:
        if torch.is_tensor(o):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return str(o)

    return json.loads(json.dumps(obj, default=default))


# -- adversarial examples on disk ---------------------------------------------------------------
def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("++", "pp"))


def adv_path(folder: str | Path, attack_name: str) -> Path:
    """Where :func:`~bnnrobust.evaluation.runner.evaluate` (``save_adv=folder``) writes an
    attack's adversarial examples."""
    return Path(folder) / f"{_safe_name(attack_name)}.pt"


def save_adv_examples(folder: Path, name: str, parts: list[tuple[Tensor, Tensor, Tensor]],
                      result: AttackResult, seed: int) -> None:
    """Write one attack's examples to :func:`adv_path` ``(folder, name)``, in sample order.

    ``parts``: ``(x_adv, y, indices)`` per batch, of every process (the caller gathers them
    and writes on rank 0 only)."""
    folder.mkdir(parents=True, exist_ok=True)
    x_adv = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    index = torch.cat([p[2] for p in parts])
    order = torch.argsort(index)
    torch.save({
        "x_adv": x_adv[order], "y": y[order], "indices": index[order], "attack": name,
        "adv_acc": result.adv_acc, "config": result.config, "seed": seed,
    }, adv_path(folder, name))


def reevaluate(
    model: nn.Module, path: str | Path, *, batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy (percent) of ``model`` on saved adversarial examples (``evaluate(save_adv=...)``).

    Reproduces the reported ``adv_acc`` of that attack for the same model (clean-misclassified
    samples were saved as their clean image, so they count as errors here too).
    """
    from bnnrobust.evaluation.checkpoint import CheckpointError
    from bnnrobust.evaluation.runner import resolve_device  # the runner imports this module

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reevaluate: {str(file)!r} does not exist.")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file: one clear message
        raise CheckpointError(f"reevaluate: {str(file)!r} is unreadable ({type(err).__name__}).") from None
    if not isinstance(blob, dict) or not {"x_adv", "y"} <= set(blob):
        raise ValueError(f"reevaluate: {str(file)!r} does not hold 'x_adv' and 'y'.")
    dev = resolve_device(device)
    x_adv, y = blob["x_adv"], blob["y"].long()
    correct = 0
    model = model.to(dev)
    with eval_mode(model), torch.no_grad():
        for s in range(0, y.shape[0], batch_size):
            xb, yb = x_adv[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
            correct += int((model(xb).argmax(dim=-1) == yb).sum())
    return 100.0 * correct / max(int(y.shape[0]), 1)
