"""`bench profile`'s report: the device, library versions and the papers' printed latencies beside
the measured rows, as markdown and JSON (``<out>/<device>.md`` / ``.json``), written atomically."""
from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
from pathlib import Path
from typing import Any

import torch

from bench.assets.reported import load_reported
from bench.core.atomic import atomic_write_json, atomic_write_text
from bench.perf.profile_spec import (
    HALF_ON_CPU_NOTE,
    REPORTED_TABLES,
    SD15_ARCHITECTURE_TEACHERS,
    THROUGHPUT_WARMUP,
    ProfileSpec,
)
from bench.perf.speedup import render_study
from bench.scoring.metrics.latency import device_name
from methods import get_method_class, method_names

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Context: device, versions, the papers' numbers
# ------------------------------------------------------------------------------------------------


def device_info(device: torch.device) -> dict:
    info = {"name": device_name(device), "type": device.type, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(total_memory_mib=props.total_memory / 2**20, capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
                    tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return info


def versions() -> dict[str, str]:
    found = {"torch": torch.__version__}            # with its build tag (+cu130, +cpu)
    for name in ("diffusers", "transformers", "accelerate", "peft", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-device"


def reported_latencies() -> list[dict]:
    """The batch-1 latencies printed in SCott Table 2 and DMD Table 3 (bench/data/reported.json),
    one per (paper, table, method, steps)."""
    data = load_reported()
    tables = {(t["paper"], t["table"]): t for t in data.get("tables", [])}
    rows, seen = [], set()
    for entry in data["entries"]:
        key = (entry["paper"], entry["table"], entry["method"], entry.get("steps"))
        if (entry["paper"], entry["table"]) not in REPORTED_TABLES or entry.get("latency_s") is None or key in seen:
            continue
        seen.add(key)
        table = tables.get((entry["paper"], entry["table"]), {})
        rows.append({"paper": entry["paper"], "short": data.get("papers", {}).get(entry["paper"], {}).get("short"),
                     "table": entry["table"], "method": entry["method"], "steps": entry.get("steps"),
                     "latency_s": entry["latency_s"], "latency_as_printed": entry.get("latency_as_printed"),
                     "gpu": entry.get("latency_gpu") or table.get("latency_gpu"),
                     "batch": entry.get("latency_batch"), "teacher": entry.get("teacher")})
    return rows


def report_notes(spec: ProfileSpec) -> list[str]:
    return [
        "Latency: batch 1, text encoder + every denoiser evaluation + VAE decode (no PIL/PNG encoding), median "
        f"and p90 of {spec.runs} timed runs after {spec.warmup} warm-up runs; "
        + ("CUDA events." if spec.device.type == "cuda" else "time.perf_counter (CPU)."),
        f"Throughput: images/s at each batch size, whole batch per network call, decoded; batch size over the "
        f"median of {spec.throughput_runs} timed batches after {THROUGHPUT_WARMUP} warm-up.",
        "Peak memory: cuda_max_allocated = torch.cuda.max_memory_allocated over the timed runs (weights "
        "included); cpu_peak_rss = the process's peak resident set (everything the process holds).",
        "Distilled methods are timed with an untrained student of the exact architecture (speed does not depend "
        "on weight values); LoRA students fused into the U-Net.",
        "diffusers: StableDiffusionPipeline from the same components, matching scheduler and step count, same "
        "guidance and seeds; output_type='latent' then the pipeline's own vae.decode call, in the VAE's dtype. "
        "ours/diffusers = ratio of the batch-1 end-to-end medians (target <= 1.02).",
        "ours and diffusers are timed one after the other in the same process; on a shared CPU, background "
        "load between the two moves their ratio by tens of percent, so judge the 1.02 target on a GPU.",
        "Training: optimizer-step time (batch preparation + forward + backward + optimizer step + EMA) through "
        "the method's training step and Trainer.fit; peak memory over all steps, optimizer state included.",
    ]




# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _collapse_unmeasured_dtypes(rows: list[dict], **labels: str) -> list[dict]:
    """Rows of a precision not measured on this device (every cell carries the same note) shown
    as one row per precision; the JSON keeps every row."""
    shown, seen = [], set()
    for r in rows:
        if r["status"] == "skipped" and r["note"] == HALF_ON_CPU_NOTE.format(dtype=r["dtype"]):
            if r["dtype"] in seen:
                continue
            seen.add(r["dtype"])
            r = {**r, **labels}
        shown.append(r)
    return shown


def render_speed_table(rows: list[dict]) -> str:
    rows = _collapse_unmeasured_dtypes(rows, method="all", steps="all", pipeline="all")
    batches = sorted({int(b) for r in rows for b in r["throughput"]})
    header = (["method", "steps", "NFE", "dtype", "pipeline", "median ms", "p90 ms", "denoiser ms", "denoiser share",
               "peak MiB"] + [f"img/s @{b}" for b in batches] + ["ours/diffusers", "note"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        pipeline = r["pipeline"] if not r.get("scheduler") else f"{r['pipeline']} ({r['scheduler']})"
        cells = [r["method"], str(r["steps"]), _fmt(r["nfe"], "d"), r["dtype"], pipeline, _fmt(r["median_ms"]),
                 _fmt(r["p90_ms"]), _fmt(r["denoiser_median_ms"]), _fmt(r["denoiser_share"], ".3f"),
                 _fmt(r["peak_memory_mb"], ".0f")]
        cells += [_fmt(r["throughput"].get(str(b)), ".1f") for b in batches]
        cells += [_fmt(r["ratio_vs_diffusers"], ".3f"), r["note"] or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _yes_no(value: Any) -> str:
    return value if isinstance(value, str) else ("yes" if value else "no")


def render_train_table(rows: list[dict]) -> str:
    header = ["method", "dtype", "mixed precision", "batch", "grad. checkpointing", "step median ms", "step p90 ms",
              "peak MiB", "largest batch that fits", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in _collapse_unmeasured_dtypes(rows, method="all", batch="-", gradient_checkpointing="-"):
        largest = str(r["largest_batch"]) if r["largest_batch"] else "-"
        skipped = (f"{r['skipped_steps']} of {r['warmup_steps'] + r['timed_steps']} steps skipped by fp16 loss "
                   "scaling" if r.get("skipped_steps") else "")
        note = "; ".join(n for n in (r["note"], skipped, r["largest_batch_note"]) if n)
        lines.append("| " + " | ".join([r["method"], r["dtype"], r["mixed_precision"] or "-", str(r["batch"]),
                                        _yes_no(r["gradient_checkpointing"]), _fmt(r["step_median_ms"], ".1f"),
                                        _fmt(r["step_p90_ms"], ".1f"), _fmt(r["peak_memory_mb"], ".0f"), largest,
                                        note]) + " |")
    return "\n".join(lines)


def render_reported_table(reported: list[dict], latency: list[dict], beside: bool = True) -> str:
    """The papers' latencies; with ``beside``, this run's median for the same method and steps."""
    ours = {}
    for r in latency:
        if r["pipeline"] == "ours" and r["median_ms"] is not None:
            ours.setdefault((r["method"], r["steps"]), f"{r['median_ms'] / 1000:.3f} ({r['dtype']})")
    ours_by_reported = {reported: name for name in method_names() for reported in get_method_class(name).reported_names}
    header = ["paper", "table", "method", "steps", "latency s (as printed)", "GPU", "batch"]
    header += ["this run, same method and steps: s (dtype)"] if beside else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in reported:
        cells = [e["short"] or e["paper"], e["table"], e["method"], "-" if e["steps"] is None else str(e["steps"]),
                 e["latency_as_printed"] or str(e["latency_s"]), e["gpu"] or "not stated",
                 "-" if e["batch"] is None else str(e["batch"])]
        if beside:
            cells.append(ours.get((ours_by_reported.get(e["method"]), e["steps"]), "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _render_commands(report: dict) -> list[str]:
    partial = "**Partial report**: the run stopped before its end; what follows is what it measured."
    if "runs" not in report:
        return ["Command:", "", "```", report["command"], "```", "",
                *([] if report.get("complete", True) else [partial, ""])]
    lines = [f"Merged by `{report['command']}` from these {len(report['runs'])} runs on this device (a run "
             "marked partial stopped before its end; its rows are those it finished):", ""]
    for run in report["runs"]:
        lines += ["```", run["command"] + ("" if run["complete"] else "   # partial"), "```", ""]
    return lines


def render_markdown(report: dict) -> str:
    device, teacher = report["device"], report["teacher"]
    sd15 = teacher["name"] in SD15_ARCHITECTURE_TEACHERS
    lines = [f"# Speed and memory on {device['name']}", "",
             f"Teacher `{teacher['name']}` ({teacher.get('resolution', '?')} px, latents "
             f"{'x'.join(map(str, teacher.get('latent_shape', []))) or '?'}, VAE dtype "
             f"{teacher.get('vae_dtype') or 'none'}), generated by `python -m bench profile` on {report['created']} "
             f"in {report['seconds']:.0f} s.", "",
             *_render_commands(report),
             "Device: " + ", ".join(f"{k} {v}" for k, v in device.items()) + ".", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".", "",
             ]
    if report["latency"]:
        lines += ["## Sampling: batch-1 latency, throughput, peak memory", "",
                  render_speed_table(report["latency"]), ""]
    if report.get("speedup"):
        lines += ["## Making it fast: where batch-1 time goes, and what each switch buys", "",
                  "Each variant runs on its own copies of the networks; `bench run` samples as "
                  "`eager`. Components are measured in isolation; `/ best components` is the end-to-end median "
                  "over the sum of each component's fastest isolated time (target <= 1.2).", ""]
        for study in report["speedup"]:
            lines += [render_study(study), ""]
    if report["training"]:
        lines += ["## Training: step time and peak memory", "", render_train_table(report["training"]), ""]
    lines += ["## Reported in the papers: another GPU", "",
              "Printed latencies (seconds per image, SD-1.5 at 512 px): SCott Table 2 on a single A100; DMD "
              "Table 3 at batch 1, its GPU not stated in the available text (DMD trained on A100s). Measured on "
              "other hardware with other code: a scale, not a comparison with the numbers above."
              + ("" if sd15 else f" This run's teacher ({teacher['name']}) is not the SD-1.5 architecture, so none "
                 "of its numbers is shown beside them."), "",
              render_reported_table(report["reported"], report["latency"], beside=sd15), "", "## Notes", ""]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    """``<out>/<device-slug>.md`` and ``.json``, each written atomically."""
    out = Path(out)
    stem = device_slug(report["device"]["name"])
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return md_path, json_path


__all__ = ["write_report", "render_markdown", "device_slug", "reported_latencies"]
