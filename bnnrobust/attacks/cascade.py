"""Worst-case cascade of attacks (AutoAttack-style ensemble evaluation).

A sample is robust only if *every* attack of the cascade failed on it. The attacks run in
order; each one sees only the samples still classified correctly, and always their *clean*
input (never a previous attack's output: starting from another attack's failed point would
make the attacks dependent and the per-attack numbers meaningless). An attack's output
replaces the clean input only where it fools the model, so the returned ``x_adv`` holds,
for every fooled sample, the example of the first attack that fooled it, and the clean
input elsewhere.

Honesty checks: every stage's output must lie in [0, 1] and, for attacks that declare
``eps`` and ``norm``, inside their threat model (a violation raises: it would make the
number meaningless); mixing threat models, or adding an unbounded attack (DeepFool),
warns at construction.

Example::

    cascade = Cascade([APGD(0.1, temperature="hns"), APGD(0.1, loss="dlr"), Square(0.1)])
    result = cascade.run(model, x, y)        # CascadeResult: per-stage accuracy and time
    print(result.table())
    x_adv = cascade(model, x, y)             # the plain Attack call
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack, AttackOutput, Norm, check_labels

__all__ = ["Cascade", "CascadeResult", "StageResult", "threat_model"]

#: relative and absolute tolerance of the threat-model check (float32 round-off)
_RTOL, _ATOL = 1e-5, 1e-6


def threat_model(attack: Attack) -> tuple[Norm, float] | None:
    """``(norm, eps)`` an attack declares through its ``norm``/``eps`` attributes, else None."""
    eps = getattr(attack, "eps", None)
    norm = getattr(attack, "norm", None)
    if eps is None or norm is None:
        return None
    return Norm.parse(norm), float(eps)


@dataclass
class StageResult:
    """One attack of a cascade run.

    Attributes:
        name: the attack's ``name``.
        n_attacked: samples it was given (those still robust before it).
        n_fooled: of those, how many it fooled (its individual success count).
        robust_acc: cumulative robust accuracy after this stage, over all ``n`` samples.
        seconds: wall-clock time of the stage (attack plus the check of its output).
    """

    name: str
    n_attacked: int
    n_fooled: int
    robust_acc: float
    seconds: float


@dataclass
class CascadeResult:
    """The outcome of :meth:`Cascade.run`.

    Attributes:
        x_adv: (B, ...) adversarial examples (clean input where no attack succeeded).
        n: number of samples.
        clean_acc: accuracy on the clean inputs.
        robust_acc: accuracy after the whole cascade (= ``stages[-1].robust_acc``).
        stages: one :class:`StageResult` per attack, in order.
        robust: (B,) bool, correct after every attack.
        fooled_by: (B,) long, index of the stage that fooled the sample; -1 if it stayed
            robust, -2 if it was misclassified already on its clean input.
    """

    x_adv: Tensor
    n: int
    clean_acc: float
    robust_acc: float
    stages: list[StageResult] = field(default_factory=list)
    robust: Tensor | None = None
    fooled_by: Tensor | None = None

    @property
    def seconds(self) -> float:
        """Total time of the attacks."""
        return sum(s.seconds for s in self.stages)

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable summary (no tensors)."""
        return {
            "n": self.n,
            "clean_acc": self.clean_acc,
            "robust_acc": self.robust_acc,
            "seconds": self.seconds,
            "stages": [dict(vars(s)) for s in self.stages],
        }

    def table(self) -> str:
        """Markdown table: one row per stage with cumulative accuracy, successes, seconds."""
        rows = ["| stage | attack | attacked | fooled | robust acc (cum.) | seconds |",
                "|---|---|---|---|---|---|",
                f"| 0 | clean | - | - | {100 * self.clean_acc:.2f} % | - |"]
        for i, s in enumerate(self.stages, 1):
            rows.append(f"| {i} | {s.name} | {s.n_attacked} | {s.n_fooled} | "
                        f"{100 * s.robust_acc:.2f} % | {s.seconds:.1f} |")
        return "\n".join(rows)


class Cascade(Attack):
    """Run ``attacks`` in order, each on the samples still correct, from the clean input.

    Args:
        attacks: the attacks (bnnrobust :class:`Attack` instances: our own, the peers of
            :mod:`bnnrobust.attacks.peers`, transfer attacks, nested cascades).
        name: the cascade's name in tables.

    ``perturb`` returns ``info["fooled_by"]`` (see :class:`CascadeResult`) as a float
    tensor; :meth:`run` returns the full :class:`CascadeResult`.
    """

    def __init__(self, attacks: Sequence[Attack], name: str = "cascade") -> None:
        super().__init__(surrogate=None, seed=None)
        attacks = list(attacks) if attacks is not None else []
        if not attacks:
            raise ValueError(
                "Cascade needs at least one attack, got an empty list; pass e.g. "
                "[APGD(eps, loss='ce'), APGD(eps, loss='dlr'), Square(eps)] or use "
                "bnnrobust.attacks.presets.preset_attacks(dataset, 'strongest')."
            )
        for i, a in enumerate(attacks):
            if not isinstance(a, Attack):
                raise TypeError(f"Cascade entry {i} must be a bnnrobust Attack, got "
                                f"{type(a).__name__} ({a!r}); build names with build_attack().")
        self.attacks: list[Attack] = attacks
        self.name = name
        models = {threat_model(a) for a in attacks}
        bounded = {m for m in models if m is not None}
        if len(bounded) > 1:
            desc = ", ".join(f"{n.value} eps={e:g}" for n, e in sorted(bounded, key=str))
            warnings.warn(f"Cascade {name!r} mixes threat models ({desc}); its worst case is "
                          "not a robust accuracy for any single one.", stacklevel=2)
        unbounded = [a.name for a in attacks if threat_model(a) is None]
        if unbounded:
            warnings.warn(f"Cascade {name!r} contains attacks without an eps bound "
                          f"({', '.join(unbounded)}); their successes are not bounded by any "
                          "threat model.", stacklevel=2)
        self.eps: float | None = None
        self.norm: Norm | None = None
        if len(bounded) == 1 and not unbounded:
            self.norm, self.eps = next(iter(bounded))
        self._last: CascadeResult | None = None

    def describe(self) -> dict[str, object]:
        # a composite: its members' descriptions, and the threat model they share (if one)
        d: dict[str, object] = {"name": self.name}
        if self.eps is not None and self.norm is not None:
            d.update(eps=self.eps, norm=self.norm.value)
        d["attacks"] = [a.describe() for a in self.attacks]
        return d

    def __repr__(self) -> str:
        return f"Cascade([{', '.join(repr(a) for a in self.attacks)}], name={self.name!r})"

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> CascadeResult:
        """Run the cascade and return per-stage cumulative accuracy, successes and times."""
        self.perturb(model, x, y)
        result, self._last = self._last, None
        assert result is not None
        return result

    @staticmethod
    def _check_stage(attack: Attack, x: Tensor, x_adv: Tensor) -> None:
        if x_adv.shape != x.shape:
            raise RuntimeError(f"Attack {attack.name!r} returned shape {tuple(x_adv.shape)} for "
                               f"inputs of shape {tuple(x.shape)}.")
        lo, hi = float(x_adv.min()), float(x_adv.max())
        if lo < -_ATOL or hi > 1 + _ATOL or lo != lo or hi != hi:
            raise RuntimeError(f"Attack {attack.name!r} returned values in [{lo:.4g}, {hi:.4g}], "
                               "outside [0, 1].")
        tm = threat_model(attack)
        if tm is None:
            return
        norm, eps = tm
        delta = (x_adv - x).flatten(1).double()
        size = delta.abs().amax(1) if norm is Norm.LINF else delta.norm(dim=1)
        worst = float(size.max())
        if worst > eps * (1 + _RTOL) + _ATOL:
            raise RuntimeError(f"Attack {attack.name!r} left its threat model: {norm.value} "
                               f"perturbation {worst:.6g} > eps {eps:.6g}.")

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        n = x.shape[0]
        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        robust = logits.argmax(1) == y
        clean_acc = float(robust.float().mean())
        fooled_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
        fooled_by[~robust] = -2
        x_adv = x.clone()
        stages: list[StageResult] = []
        for k, attack in enumerate(self.attacks):
            t0 = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            n_fooled = 0
            if idx.numel():
                xs = x[idx]  # always the clean input of the remaining samples
                out = attack.perturb(model, xs, y[idx]).x_adv.detach()
                self._check_stage(attack, xs, out)
                with torch.no_grad():
                    wrong = model(out).argmax(1) != y[idx]
                hit = idx[wrong]
                x_adv[hit] = out[wrong].to(x_adv.dtype)
                robust[hit] = False
                fooled_by[hit] = k
                n_fooled = int(wrong.sum())
            stages.append(StageResult(name=attack.name, n_attacked=int(idx.numel()),
                                      n_fooled=n_fooled, robust_acc=float(robust.float().mean()),
                                      seconds=time.perf_counter() - t0))
        self._last = CascadeResult(x_adv=x_adv, n=n, clean_acc=clean_acc,
                                   robust_acc=float(robust.float().mean()), stages=stages,
                                   robust=robust.clone(), fooled_by=fooled_by)
        return AttackOutput(x_adv, {"fooled_by": fooled_by.to(x.dtype)})
