"""Strongest-cascade robust accuracy vs AutoAttack-standard (torchattacks) on a Fashion-MNIST BNN.

Side by side on the same model and the same N test images (L∞, eps 0.1 by default):

* ``strongest`` — bnnrobust's worst-case cascade (``preset_attacks("fmnist", "strongest")``):
  APGD-CE++HNS → APGD-CE → APGD-DLR → APGD-T → [APGD-CE++HNS with the tanh:5 surrogate, sign
  activations only] → Square;
* ``autoattack`` — AutoAttack-standard's components run through torchattacks with the
  published budgets (APGD-CE 100 steps, APGD-T 100 steps × 9 targets, FAB-T 100 steps × 9
  targets, Square 5000 queries), as a worst-case cascade (torchattacks' own ``AutoAttack``
  runs APGD/FAB with 10 steps only);
* reference rows: PGD-20 and PGD++HNS-20 of the fmnist preset.

The model is loaded from ``--checkpoint`` (a pickled ``nn.Module`` or a state dict for
``create_model("convnet", num_classes=10, in_channels=1, binarizer=...)``) or trained here
for ``--train-steps`` Adam steps (lr 1e-3, batch 128) on the Fashion-MNIST training set.

Run: ``.venv/bin/python benchmarks/bench_strongest.py [--n 1000] [--binarizer md_tanh_s]
[--checkpoint PATH] [--train-steps 600] [--eps 0.1] [--json out.json]``. Data are read
offline from ``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``) or
``--data-dir``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnnrobust.attacks import PGD, Cascade, Square, TorchattacksAPGD, TorchattacksAPGDT  # noqa: E402
from bnnrobust.attacks.peers import TorchattacksFAB  # noqa: E402
from bnnrobust.attacks.presets import strongest_cascade  # noqa: E402
from bnnrobust.data.mnist import read_idx  # noqa: E402

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_split(data_dir: Path, split: str) -> tuple[Tensor, Tensor]:
    """(images (n, 1, 28, 28) float in [0, 1], labels (n,) long) of 'train' or 't10k'."""
    def find(stem: str) -> Path:
        for name in (stem + ".gz", stem):
            for folder in (data_dir, data_dir / "FashionMNIST" / "raw"):
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(f"{stem}(.gz) not found under {data_dir}; install the Debian "
                                "package dataset-fashion-mnist or pass --data-dir.")

    x = torch.from_numpy(read_idx(find(f"{split}-images-idx3-ubyte")).copy()).float() / 255.0
    y = torch.from_numpy(read_idx(find(f"{split}-labels-idx1-ubyte")).copy()).long()
    return x[:, None], y


def make_model(binarizer: str) -> tuple[nn.Module, str]:
    try:
        from bnnrobust.models import create_model

        return create_model("convnet", num_classes=10, in_channels=1, binarizer=binarizer), \
            f"bnnrobust convnet ({binarizer})"
    except Exception as err:  # pragma: no cover - fallback if the model zoo is unavailable
        print(f"create_model unavailable ({err}); using a local float conv net", file=sys.stderr)
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 49, 10)), "local float conv net"


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    binarizers = {id(m.binarizer): m.binarizer for m in model.modules() if hasattr(m, "binarizer")}
    model.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for b in binarizers.values():
            if hasattr(b, "on_optimizer_step"):
                b.on_optimizer_step(model, step + 1)
    model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="test images (first N of t10k)")
    ap.add_argument("--eps", type=float, default=0.1, help="L∞ radius in [0, 1] pixel units")
    ap.add_argument("--binarizer", default="md_tanh_s")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--data-dir", type=Path, default=DEBIAN_DIR)
    ap.add_argument("--steps", type=int, default=100, help="APGD/FAB steps")
    ap.add_argument("--n-queries", type=int, default=5000, help="Square queries")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model, desc = make_model(args.binarizer)
    t0 = time.perf_counter()
    if args.checkpoint is not None:
        obj = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        if isinstance(obj, nn.Module):
            model = obj
        else:
            model.load_state_dict(obj.get("state_dict", obj) if isinstance(obj, dict) else obj)
        desc += f", checkpoint {args.checkpoint}"
    else:
        xtr, ytr = load_split(args.data_dir, "train")
        train(model, xtr, ytr, args.train_steps, args.seed)
        desc += f", trained here: {args.train_steps} Adam steps, batch 128"
    train_s = time.perf_counter() - t0
    print(f"model ready in {train_s:.0f} s: {desc}", file=sys.stderr, flush=True)
    model.eval()
    xte, yte = load_split(args.data_dir, "t10k")
    x, y = xte[: args.n], yte[: args.n]
    clean = accuracy(model, x, y)

    eps = args.eps
    steps = args.steps
    rows: list[tuple[str, float, float]] = []
    results: dict[str, object] = {}
    for name, atk in [
        ("pgd (20 steps, 0.01)", PGD(eps=eps, step_size=eps / 10, steps=20, seed=args.seed)),
        ("pgd++hns (20 steps)", PGD(eps=eps, step_size=eps / 10, steps=20, temperature="hns",
                                    seed=args.seed)),
    ]:
        t = time.perf_counter()
        a = accuracy(model, atk(model, x, y), y)
        rows.append((name, a, time.perf_counter() - t))
        print(f"{name}: {100 * a:.1f} %", file=sys.stderr, flush=True)

    cascades = {
        "strongest": strongest_cascade("fmnist", eps=eps, steps=steps, n_queries=args.n_queries,
                                       seed=args.seed),
        "autoattack-standard (torchattacks)": Cascade([
            TorchattacksAPGD(eps, steps=steps, loss="ce", seed=args.seed),
            TorchattacksAPGDT(eps, steps=steps, n_target_classes=9, seed=args.seed),
            TorchattacksFAB(eps, steps=steps, n_target_classes=9, seed=args.seed),
            Square(eps, n_queries=args.n_queries, seed=args.seed),
        ], name="autoattack"),
    }
    tables = {}
    for name, casc in cascades.items():
        res = casc.run(model, x, y)
        check = accuracy(model, res.x_adv, y)
        assert abs(check - res.robust_acc) < 1e-9, "re-evaluation must reproduce the number"
        rows.append((name, res.robust_acc, res.seconds))
        tables[name] = res.table()
        print(f"{name}:\n{res.table()}", file=sys.stderr, flush=True)
        results[name] = res.to_dict()

    date = datetime.date.today().isoformat()
    print(f"# bench_strongest — {date}, N = {args.n}, L∞ eps = {eps}, model: {desc}")
    print(f"(torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads; model setup {train_s:.0f} s)\n")
    print("| attack | robust acc | seconds |\n|---|---|---|")
    print(f"| clean | {100 * clean:.1f} % | - |")
    for name, a, s in rows:
        print(f"| {name} | {100 * a:.1f} % | {s:.0f} |")
    for name, table in tables.items():
        print(f"\n{name}:\n{table}")
    if args.json is not None:
        args.json.write_text(json.dumps({"date": date, "n": args.n, "eps": eps, "model": desc,
                                         "clean_acc": clean,
                                         "rows": [{"attack": n, "robust_acc": a, "seconds": s}
                                                  for n, a, s in rows],
                                         "cascades": results}, indent=2))


if __name__ == "__main__":
    main()
