"""The report's combined plot: PGD vs PGD++ (HNS) accuracy-vs-eps of every swept network."""

from __future__ import annotations

from pathlib import Path

from .common import read_json
from .context import Context
from .specs import BY_KEY


def combined_sweep_plot(ctx: Context) -> Path | None:
    """PGD vs PGD++ (HNS) accuracy-vs-eps of every swept network in one PNG
    (``<out>/sweep_pgd_vs_pgdpp.png``); None when no sweep was run."""
    sweeps = {k: read_json(ctx.sweep_json(k)) for k in ctx.settings.sweep_models
              if ctx.sweep_json(k).is_file()}
    if not sweeps:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    try:
        for i, (k, sw) in enumerate(sweeps.items()):
            eps = sw["eps"]
            order = sorted(range(len(eps)), key=lambda j: eps[j])
            color = f"C{i}"
            for name, style in (("pgd", "--"), ("pgd++hns", "-")):
                curve = sw["attacks"].get(name)
                if curve is None:
                    continue
                ax.plot([eps[j] for j in order], [curve["adv_acc"][j] for j in order], style,
                        color=color, marker="o", label=f"{BY_KEY[k].label} {name.upper()}")
        ax.set_xlabel("eps (L∞, pixel units in [0, 1])")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("PGD (dashed) vs PGD++ HNS (solid)")
        fig.tight_layout()
        path = ctx.out / "sweep_pgd_vs_pgdpp.png"
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
