"""Running the pipeline: the plan of stages, which of them finished earlier (markers in
``<out>/stages/``, outputs, checks), the manifest of the output folder, the printed plan and
progress lines, and :func:`run`, the Python entry point."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .common import (
    DEFAULT_MARKDOWN,
    FORMAT_VERSION,
    MANIFEST,
    ReproError,
    fmt_s,
    log,
    now,
    read_json,
    write_json,
)
from .context import Context, Stage, calibrate
from .measurements import clever_stage, rho_stage, signal_stage, sweep_stage
from .peers import peer_stage
from .report import build_report, report_stage
from .settings import Settings
from .specs import BY_KEY, MODELS, REF_KEY
from .suite import eval_stage
from .training import train_stage


def plan_stages(ctx: Context) -> list[Stage]:
    """Every stage of the run, in order (training, evaluation, signal, sweeps, check, report)."""
    stages = [train_stage(ctx, m) for m in MODELS]
    stages += [eval_stage(ctx, m) for m in MODELS]
    stages.append(signal_stage(ctx))
    stages += [sweep_stage(ctx, BY_KEY[k]) for k in ctx.settings.sweep_models]
    stages.append(rho_stage(ctx))
    stages.append(clever_stage(ctx))
    stages.append(peer_stage(ctx))
    stages.append(report_stage(ctx, [s.key for s in stages]))
    return stages


def stage_done(ctx: Context, stage: Stage) -> tuple[bool, str]:
    """(finished?, reason) of one stage from its marker, outputs and check."""
    marker = ctx.marker(stage.key)
    if not marker.is_file():
        return False, "not run yet"
    missing = [p for p in stage.outputs if not p.is_file()]
    if missing:
        return False, f"output {missing[0]} is missing"
    if stage.check is not None:
        try:
            body = read_json(marker).get("result", {})
        except (OSError, json.JSONDecodeError):
            return False, f"marker {marker} is unreadable"
        problem = stage.check(body)
        if problem:
            return False, problem
    return True, "finished earlier"


def prepare_out(out: Path, settings: Settings, force: bool) -> dict[str, Any]:
    """Create/validate the output folder; returns the manifest (new or the resumed one)."""
    manifest_path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise ReproError(f"--out {out} exists and is not a folder; choose another path.")
    has_files = out.is_dir() and any(out.iterdir())
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = read_json(manifest_path)
        except (OSError, json.JSONDecodeError):
            manifest = None
    if has_files and manifest is None:
        raise ReproError(
            f"--out {out} already holds files but no readable {MANIFEST}: it is not a "
            "reproduction folder, so nothing there is overwritten or deleted (not even with "
            "--force). Choose an empty or new folder.")
    if manifest is not None and force:
        log(f"--force: deleting the earlier reproduction in {out}")
        shutil.rmtree(out)
        manifest = None
    if manifest is not None:
        old = manifest.get("settings")
        if old != settings.to_dict() or manifest.get("format") != FORMAT_VERSION:
            diff = sorted(k for k in settings.to_dict() if (old or {}).get(k) != settings.to_dict()[k])
            raise ReproError(
                f"--out {out} holds a reproduction made with other settings (differs in: "
                f"{', '.join(diff) or 'format version'}). Refusing to mix or overwrite them: pass "
                "--force to delete it and start over, or choose another --out.")
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT_VERSION, "settings": settings.to_dict(), "created": now(),
                "status": "running", "stage_seconds": {}, "stage_estimates": {}}
    write_json(manifest_path, manifest)
    return manifest


def print_plan(ctx: Context, stages: Sequence[Stage],
               status: Mapping[str, tuple[bool, str]]) -> float:
    """Print the stage list with estimates; returns the estimated seconds still to run."""
    n = len(stages)
    s = ctx.settings
    log(f"bnnrobust reproduction ({s.profile}{', synthetic data' if s.synthetic else ''}) "
        f"-> {ctx.out}")
    log(f"speed: {1000 * ctx.step_seconds:.2f} ms per image-step (forward+backward) on "
        f"{torch.get_num_threads()} thread(s); plan (generous estimates):")
    for i, st in enumerate(stages, 1):
        done, why = status.get(st.key, (False, ""))
        log(f"  {i:2d}/{n} {st.title:<62} {fmt_s(st.estimate_s):>9}"
            f"{'  (reused: ' + why + ')' if done else ''}")
    todo = sum(st.estimate_s for st in stages if not status.get(st.key, (False, ""))[0])
    log(f"  total to run: {fmt_s(todo)}"
        + ("  (estimated from this machine's speed right now, ~1.4x a pilot; a busy machine "
           "takes longer: try --threads 1 there; an interrupted run resumes where it stopped)"
           if todo > 80 * 60 else ""))
    return todo


#: stages planned shorter than this (a reused zoo checkpoint: 5 s planned, 0 s spent) say
#: nothing about the machine's speed and do not rescale the remaining estimates
MIN_OBSERVED_S = 60.0


def speed_ratio(observed: Sequence[tuple[float, float]]) -> float:
    """Real / planned seconds over the finished ``(planned, real)`` stages planned at
    :data:`MIN_OBSERVED_S` or more (1.0 until one finished): the factor applied to the
    remaining estimates in the progress lines."""
    work = [(p, r) for p, r in observed if p >= MIN_OBSERVED_S]
    planned = sum(p for p, _ in work)
    return sum(r for _, r in work) / planned if planned > 0 else 1.0


def _run_stages(ctx: Context, stages: Sequence[Stage], status: Mapping[str, tuple[bool, str]],
                manifest: dict[str, Any], t_start: float) -> None:
    """Run every stage not finished earlier (or whose input reran), writing its marker and
    its time in the manifest as soon as it finished; prints the progress lines."""
    n = len(stages)
    rerun: set[str] = set()
    observed: list[tuple[float, float]] = []
    for i, st in enumerate(stages, 1):
        done, why = status[st.key]
        if done and not any(d in rerun for d in st.deps):
            log(f"[{i}/{n}] {st.title}: reused ({why})")
            continue
        if done:
            log(f"[{i}/{n}] {st.title}: rerun (an input changed)")
        elapsed = time.perf_counter() - t_start
        ratio = speed_ratio(observed)
        remaining = sum(x.estimate_s for x in stages[i - 1:]
                        if not status[x.key][0] or any(d in rerun for d in x.deps) or x.key == st.key)
        log(f"[{i}/{n}] {st.title} — est. {fmt_s(st.estimate_s * ratio)} | elapsed "
            f"{fmt_s(elapsed)} | ETA {fmt_s(remaining * ratio)}")
        t0 = time.perf_counter()
        ctx.marker(st.key).unlink(missing_ok=True)
        result = st.run()
        dt = time.perf_counter() - t0
        observed.append((st.estimate_s, dt))
        write_json(ctx.marker(st.key), {"stage": st.key, "finished": now(), "seconds": dt,
                                        "result": result})
        manifest["stage_seconds"][st.key] = dt
        write_json(ctx.out / MANIFEST, manifest)
        rerun.add(st.key)
        log(f"[{i}/{n}] done in {fmt_s(dt)} (estimate {fmt_s(st.estimate_s)})")


def run(out: str | Path, *, quick: bool = False, synthetic: bool = False, force: bool = False,
        markdown: str | Path | None = None, progress: bool = True,
        settings: Settings | None = None, step_seconds: float | None = None,
        dry_run: bool = False, threads: int | None = None, zoo: bool | None = None) -> dict[str, Any]:
    """Run (or resume) the reproduction; returns the ``summary.json`` body.

    Args:
        out: output folder (``results/fmnist``).
        quick: toy-size profile (:meth:`Settings.quick`), for tests and smoke runs.
        synthetic: use :class:`~bnnrobust.data.SyntheticDataModule` instead of Fashion-MNIST.
        force: delete an earlier reproduction in ``out`` and start from scratch.
        markdown: report path; default ``docs/results.md`` for the full Fashion-MNIST run,
            ``<out>/results.md`` otherwise (so that toy runs never replace the real report).
        progress: progress bars inside evaluation stages.
        settings: explicit settings (overrides ``quick``/``synthetic``).
        step_seconds: seconds per image-step for the estimates (default: measured here).
        dry_run: only print the plan (stages and estimates); write nothing.
        threads: torch CPU threads (default: torch's, one per core). On a machine busy with
            other work, 1 thread is much faster than 2 fighting for the same cores.
        zoo: full Fashion-MNIST profile only: reuse the model zoo's checkpoints of the
            ``configs/fmnist/`` recipes (trained by ``train.py``; checksum, architecture, data
            and epoch checked) instead of training them again; the adversarial trainings run.
            ``None`` (default): on for the full Fashion-MNIST profile, off otherwise;
            ``False`` trains the five recipes again (``--retrain``).

    Raises:
        ReproError: ``out`` holds a complete run, another run's settings or foreign files
            (and ``force`` is false), or a needed file is missing.
    """
    if zoo and (quick or synthetic):
        raise ReproError("--zoo reuses the zoo's Fashion-MNIST networks of the full profile; it "
                         "cannot be combined with --quick or --synthetic.")
    s = settings or (Settings.quick(synthetic) if quick else Settings.full(synthetic, zoo=zoo))
    if threads is not None:
        if threads < 1:
            raise ReproError(f"--threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)
    out = Path(out)
    if markdown is None:
        markdown = DEFAULT_MARKDOWN if (s.profile == "full" and not s.synthetic) else out / "results.md"
    markdown = Path(markdown)
    if not s.synthetic:
        _check_fmnist()
    if dry_run:
        ctx = Context(out, s, markdown, progress)
        ctx.step_seconds = step_seconds or calibrate(s.width or 1.0)
        stages = plan_stages(ctx)
        todo = print_plan(ctx, stages, {})
        return {"plan": {st.key: st.estimate_s for st in stages}, "total_s": todo,
                "step_seconds": ctx.step_seconds}
    manifest = prepare_out(out, s, force)
    ctx = Context(out, s, markdown, progress)
    status = {st.key: stage_done(ctx, st) for st in plan_stages(ctx)}
    if all(done for done, _ in status.values()):
        raise ReproError(
            f"--out {out} already holds a complete reproduction (report {markdown}). Refusing to "
            "overwrite it: pass --force to delete it and recompute everything, or delete one "
            f"output (e.g. {ctx.eval_json(REF_KEY)}) and rerun to recompute just that part.")
    ctx.step_seconds = step_seconds or calibrate(s.width or 1.0)
    stages = plan_stages(ctx)  # again, with this machine's speed in the estimates
    torch.set_float32_matmul_precision("high")
    t_start = time.perf_counter()
    print_plan(ctx, stages, status)
    manifest["step_seconds"] = ctx.step_seconds
    manifest["status"] = "running"
    manifest.setdefault("stage_estimates", {}).update({st.key: st.estimate_s for st in stages})
    write_json(out / MANIFEST, manifest)
    _run_stages(ctx, stages, status, manifest, t_start)
    manifest["status"] = "complete"
    manifest["finished"] = now()
    manifest["trained_in_last_invocation"] = ctx.trained
    write_json(out / MANIFEST, manifest)
    # the report was written before these last manifest fields; refresh its time table
    md, summary = build_report(ctx)
    markdown.write_text(md)
    write_json(out / "summary.json", summary)
    log(f"finished in {fmt_s(time.perf_counter() - t_start)}; report: {markdown}")
    return summary


def _check_fmnist() -> None:
    from bnnrobust.data import FashionMNISTDataModule

    try:
        FashionMNISTDataModule().locate()
    except FileNotFoundError as err:
        raise ReproError(f"{err} The reproduction is offline: install the Fashion-MNIST files, "
                         "or pass --synthetic to run the pipeline on synthetic data.") from None
