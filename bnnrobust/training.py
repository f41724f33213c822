"""``train.py``: fit, then test the best checkpoint, then print a summary.

Shares :class:`bnnrobust.cli.BNNRobustCLI` (and so every config) with ``python -m bnnrobust``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser

from bnnrobust.cli import BNNRobustCLI
from bnnrobust.safe_loading import is_remote


class TrainCLI(BNNRobustCLI):
    """No subcommands: ``--ckpt_path`` resumes fit (``last`` = the run's last checkpoint)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume fit from this checkpoint; 'last' = this run's last.ckpt.")
        parser.add_argument("--skip_test", type=bool, default=False,
                            help="Only fit; do not test the best checkpoint afterwards.")
        parser.add_argument("--summary_json", type=str | None, default=None,
                            help="Also write the final summary (val/test metrics) to this JSON file.")


def check_intact(ckpt_path: str) -> str:
    """``ckpt_path`` if it reads back; else exit naming it and the newest intact neighbour."""
    from bnnrobust.evaluation.checkpoint import CheckpointError, load_checkpoint_dict

    try:
        load_checkpoint_dict(ckpt_path)
        return ckpt_path
    except CheckpointError as err:
        problem = str(err)
    others = sorted((p for p in Path(ckpt_path).parent.glob("*.ckpt") if str(p) != ckpt_path),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    intact = None
    for other in others:
        try:
            load_checkpoint_dict(other)
            intact = other
            break
        except CheckpointError:
            continue
    offer = (f" The newest intact checkpoint of this run is {str(intact)!r}: resume from it with "
             f"--ckpt_path {intact}." if intact else
             " No other intact checkpoint is in that folder; start again without --ckpt_path.")
    raise SystemExit(f"error: cannot resume: {problem}{offer}")


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | None) -> str | None:
    """'last' → ``<checkpoint_dir>/last.ckpt`` when it exists (else None: start fresh).

    A checkpoint that does not read back (truncated by a kill during the write) is named, with
    the newest intact checkpoint of the same folder offered instead.
    """
    if ckpt_path != "last":
        if ckpt_path is not None and is_remote(ckpt_path):
            return ckpt_path  # checked (refused unless allowed) by BNNRobustCLI
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise SystemExit(f"error: --ckpt_path {ckpt_path!r} does not exist. Give a checkpoint "
                             "file, or 'last' to resume this run from its last checkpoint.")
        return check_intact(ckpt_path) if ckpt_path is not None else None
    last = Path(checkpoint_dir or "") / "last.ckpt"
    if last.is_file():
        return check_intact(str(last))
    print(f"[bnnrobust] no last checkpoint in {checkpoint_dir}; starting from scratch.",
          file=sys.stderr)
    return None


def format_summary(name: str, metrics: dict[str, float]) -> str:
    """A small plain-text table of the run's final metrics (accuracies in percent)."""
    lines = [f"== bnnrobust summary: {name} =="]
    width = max((len(k) for k in metrics), default=10)
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{100 * value:6.2f} %" if key.endswith("acc") else f"{value:.4g}"
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> dict[str, float]:
    torch.set_float32_matmul_precision("high")
    cli = TrainCLI(args=args, run=False)
    cfg = cli.config
    ckpt_cb = cli.trainer.checkpoint_callback
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), getattr(ckpt_cb, "dirpath", None))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics: dict[str, Any] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()
                               if k.startswith("val/") and torch.as_tensor(v).numel() == 1}
    if not cfg.get("skip_test"):
        best = getattr(ckpt_cb, "best_model_path", "") or None
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule,
                                   ckpt_path=best if best else None, weights_only=True)
        for res in results:
            metrics.update({k: float(v) for k, v in res.items()})
    if cli.trainer.is_global_zero:
        logger = cli.trainer.logger
        name = cfg.get("run_name") or (f"{logger.name}/version_{logger.version}" if logger
                                       else Path(str(cli.trainer.default_root_dir)).name)
        print(format_summary(name, metrics))
        if cfg.get("summary_json"):
            Path(cfg["summary_json"]).parent.mkdir(parents=True, exist_ok=True)
            Path(cfg["summary_json"]).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
