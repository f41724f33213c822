"""What the checks share: the subset, the settings, and the attack and gradient results that
more than one check uses (computed once, on first use)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from bnnrobust.attacks.base import Norm
from bnnrobust.evaluation.diagnose.common import correct_after, frac, predict
from bnnrobust.evaluation.diagnose.probe import GradProbe, probe_gradients


@dataclass(frozen=True)
class Settings:
    """The validated settings of one diagnosis (eps and radii in [0, 1] pixel units).

    See :func:`~bnnrobust.evaluation.diagnose.diagnose` for the meaning of each field.
    """

    eps: float
    norm: Norm
    rho: float = 0.01
    seed: int = 0
    steps_list: tuple[int, ...] = (10, 20, 100, 500)
    eps_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    square_queries: int = 1000
    n_clever: int = 50
    clever_points: int = 16
    n_signal: int = 100
    batch_size: int = 256
    source_model: nn.Module | None = None

    @property
    def ref_steps(self) -> int:
        """Steps of the reference PGD at eps (the white-box attack under suspicion)."""
        return min(20, max(self.steps_list))


@dataclass
class Context:
    """The subset ``(x, y)`` (images in [0, 1]) of one diagnosis, its settings, and the results
    the checks share. The model is in eval mode while the checks use it."""

    model: nn.Module
    x: Tensor
    y: Tensor
    settings: Settings
    clean_correct: Tensor = field(init=False)
    #: non-PGD attack results at eps, per attack name (for CLEVER)
    other_attacks: dict[str, Tensor] = field(default_factory=dict)
    _pgd: dict[tuple[float, int, str | None], Tensor] = field(default_factory=dict)
    _probe: GradProbe | None = None

    def __post_init__(self) -> None:
        self.clean_correct = predict(self.model, self.x, self.settings.batch_size).argmax(dim=1) == self.y

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def clean_acc(self) -> float:
        return frac(self.clean_correct)

    def pgd(self, eps: float, steps: int, temperature: str | None = None) -> Tensor:
        """Per-sample correct after PGD (step size 2.5·eps/steps, seeded random start); cached."""
        key = (eps, steps, temperature)
        if key not in self._pgd:
            from bnnrobust.attacks.pgd import PGD

            s = self.settings
            atk = PGD(eps=eps, step_size=2.5 * eps / steps, steps=steps, norm=s.norm,
                      temperature=temperature, seed=s.seed)
            self._pgd[key] = correct_after(self.model, atk, self.x, self.y, s.batch_size)
        return self._pgd[key]

    def pgd_runs(self) -> dict[tuple[float, int, str | None], Tensor]:
        """Every PGD result so far, keyed by ``(eps, steps, temperature)``."""
        return dict(self._pgd)

    def white_box_at_eps(self) -> tuple[Tensor, list[str]]:
        """Per-sample worst case over every plain PGD run at ``eps`` so far (one run of
        ``ref_steps`` if none): the white-box attack whose gradients are under suspicion."""
        eps = self.settings.eps
        runs = {k: v for k, v in self._pgd.items() if k[0] == eps and k[2] is None}
        if not runs:
            self.pgd(eps, self.settings.ref_steps)
            runs = {k: v for k, v in self._pgd.items() if k[0] == eps and k[2] is None}
        robust = self.clean_correct.clone()
        for v in runs.values():
            robust &= v
        return robust, [f"pgd-{s}" for (_, s, _) in runs]

    def probe(self) -> GradProbe:
        """The gradient probe at the clean inputs (computed on first use)."""
        if self._probe is None:
            self._probe = probe_gradients(self.model, self.x, self.y, self.settings.batch_size)
        return self._probe

    def probed(self) -> GradProbe | None:
        """The gradient probe if an earlier check computed it, else None."""
        return self._probe
