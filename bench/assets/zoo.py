"""The zoo: published students of registered methods, by name (``--student NAME``).

Each entry says where the weights are on the Hugging Face Hub, in which format, which teacher they
were distilled from, which registered method samples them and with which released preset (the
step counts, guidance and scheduler of the model card or the official code), and the numbers
printed for them, shown beside ours in the reported table (``bench list`` prints the zoo).

``--student`` also takes a hub id (``owner/name``, optionally ``owner/name@revision``, and a
subfolder or file inside the repo: ``owner/name/model/x/pytorch_model.bin``) or a local folder or
file (:func:`parse_student_ref`); those need ``--method`` (and the teacher they fit).
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bench.core.errors import UsageError

#: The formats a published student comes in (bench.assets.published detects them)
STUDENT_FORMATS = (
    "unet-folder",   # a diffusers UNet2DConditionModel folder, at the root or in unet/
    "pipeline",      # a full diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, ...)
    "lora",          # LoRA weights (diffusers / peft / kohya keys, as load_lora_weights takes them)
    "state-dict",    # a raw UNet state dict: .safetensors, or a .bin read with torch.load(weights_only=True)
)


@dataclass(frozen=True)
class PaperNumber:
    """A number printed for a published student, with where it was printed."""

    suite: str
    metric: str
    steps: int
    value: float
    source: str


@dataclass(frozen=True)
class ZooEntry:
    name: str
    summary: str
    hub_id: str
    format: str
    teacher: str                 # a teacher name of `bench list` (sd15) or the hub id it was distilled from
    teacher_hub_id: str
    method: str                  # the registered method whose sampler runs it
    steps: tuple[int, ...]       # the step counts its release recommends
    guidance_scale: float        # diffusers convention (1 = no CFG); LCM's w-embedding takes g = w + 1
    scheduler: str               # the diffusers scheduler of the released preset
    pipeline: str                # the stock diffusers pipeline that runs it
    source: str                  # model card / official repository
    path: str = ""               # a subfolder or file inside the repo ("" = the repo root)
    revision: str | None = None  # None: the default branch (the resolved commit is recorded)
    config: str = ""             # sampler config overrides ("K=V,..." as --config)
    paper: tuple[PaperNumber, ...] = ()

    @property
    def reference(self) -> str:
        return f"{self.hub_id}/{self.path}" if self.path else self.hub_id


_DMD2_ZOO = "tianweiy/DMD2 experiments/sdv1.5/README.md (model zoo)"


def _dmd2_sd15(name: str, stage: str, run: str, iteration: str, fid: float) -> ZooEntry:
    """One of DMD2's two SD-1.5 generators (a raw UNet state dict in the tianweiy/DMD2 hub repo)."""
    return ZooEntry(
        name=name, summary=f"DMD2 one-step SD-1.5 generator, {stage}", hub_id="tianweiy/DMD2", format="state-dict",
        path=f"model/sdv1.5/laion6.25_sd_baseline_8node_guidance1.75_{run}_checkpoint_model_{iteration}/pytorch_model.bin",
        teacher="sd15", teacher_hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5", method="dmd2",
        steps=(1,), guidance_scale=1.0, scheduler="one step at t = 999 (x0 from the epsilon prediction)",
        pipeline="StableDiffusionPipeline + LCMScheduler(timesteps=[999])",
        source=f"{_DMD2_ZOO}; loaded as tianweiy/DMD2 main/test_folder_sd.py::create_generator does",
        config="denoising_step_list=999,step_counts=1",
        paper=(PaperNumber("coco2014-30k", "fid", 1, fid, _DMD2_ZOO),))

ZOO: Mapping[str, ZooEntry] = types.MappingProxyType({entry.name: entry for entry in (
    ZooEntry(
        name="lcm-sd15", summary="LCM of SD-1.5 (full U-Net with the w embedding), latent-consistency",
        hub_id="latent-consistency/lcm-sdv1-5", format="unet-folder",
        teacher="sd15", teacher_hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5", method="lcm",
        steps=(1, 2, 4, 8), guidance_scale=8.0, scheduler="LCMScheduler (original_inference_steps 50)",
        pipeline="LatentConsistencyModelPipeline (or StableDiffusionPipeline + LCMScheduler)",
        source="model card of latent-consistency/lcm-sdv1-5; Luo et al. 2023, arXiv:2311.05556",
        paper=(PaperNumber("coco2014-30k", "fid", 2, 14.29, "arXiv:2404.13903 Table 2a (LCM, SD-1.5)"),
               PaperNumber("coco2014-30k", "fid", 4, 10.68, "arXiv:2404.13903 Table 2a (LCM, SD-1.5)"),
               PaperNumber("coco2017-5k", "fid", 2, 25.22, "arXiv:2404.13903 Table 2b (LCM, SD-1.5)"),
               PaperNumber("coco2017-5k", "fid", 4, 21.41, "arXiv:2404.13903 Table 2b (LCM, SD-1.5)"))),
    ZooEntry(
        name="lcm-lora-sd15", summary="LCM-LoRA of SD-1.5 (rank-64 LoRA on the teacher U-Net), latent-consistency",
        hub_id="latent-consistency/lcm-lora-sdv1-5", path="pytorch_lora_weights.safetensors", format="lora",
        teacher="sd15", teacher_hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5", method="lcm-lora",
        steps=(1, 2, 4, 8), guidance_scale=1.0, scheduler="LCMScheduler (original_inference_steps 50)",
        pipeline="StableDiffusionPipeline + LCMScheduler + load_lora_weights",
        source="model card of latent-consistency/lcm-lora-sdv1-5 (guidance_scale 0, i.e. no CFG); "
               "Luo et al. 2023, arXiv:2311.05556",
        paper=(PaperNumber("coco2014-30k", "fid", 1, 77.9, "arXiv:2311.18828 Table 4"),
               PaperNumber("coco2014-30k", "clip", 1, 0.238, "arXiv:2311.18828 Table 4"),
               PaperNumber("coco2014-30k", "fid", 2, 24.28, "arXiv:2311.18828 Table 4"),
               PaperNumber("coco2014-30k", "clip", 2, 0.294, "arXiv:2311.18828 Table 4"),
               PaperNumber("coco2014-30k", "fid", 4, 23.62, "arXiv:2311.18828 Table 4"),
               PaperNumber("coco2014-30k", "clip", 4, 0.297, "arXiv:2311.18828 Table 4"))),
    ZooEntry(
        name="lcm-dreamshaper-v7", summary="LCM of Dreamshaper v7 (full pipeline), the LCM paper's demo model",
        hub_id="SimianLuo/LCM_Dreamshaper_v7", format="pipeline",
        teacher="Lykon/dreamshaper-7", teacher_hub_id="Lykon/dreamshaper-7", method="lcm",
        steps=(1, 2, 4, 8), guidance_scale=8.0, scheduler="LCMScheduler (original_inference_steps 50)",
        pipeline="LatentConsistencyModelPipeline",
        source="model card of SimianLuo/LCM_Dreamshaper_v7; Luo et al. 2023, arXiv:2310.04378 "
               "(no COCO numbers are printed for it)"),
    _dmd2_sd15("dmd2-sd15", "stage 1 (no GAN; 39K iterations)",
               "lr1e-5_seed10_dfake10_from_scratch_fid9.28", "039000", 9.28),
    _dmd2_sd15("dmd2-sd15-gan", "stage 2 (GAN, resumed from stage 1)",
               "lr5e-7_seed10_dfake10_diffusion1000_gan1e-3_resume_fid8.35", "041000", 8.35),
)})


# ------------------------------------------------------------------------------------------------
# --student references
# ------------------------------------------------------------------------------------------------

_HUB_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.-]+))?(?:/(?P<path>\S+))?")


@dataclass(frozen=True)
class StudentRef:
    """What ``--student`` names: a zoo entry, a hub repo (with a path inside it), or a local path."""

    kind: str                        # "zoo" | "hub" | "local"
    text: str                        # as given
    entry: ZooEntry | None = None
    hub_id: str = ""
    path: str = ""                   # inside the hub repo
    revision: str | None = None
    local: Path | None = None

    @property
    def label(self) -> str:
        """The row label: the zoo name, ``owner/name[/path]``, or the local path's name."""
        if self.kind == "zoo":
            return self.entry.name
        if self.kind == "hub":
            return f"{self.hub_id}/{self.path}" if self.path else self.hub_id
        return self.local.name


def parse_student_ref(text: str) -> StudentRef:
    """A zoo name; else an existing local file or folder; else a hub reference
    ``owner/name[@revision][/path/in/repo]``. One UsageError naming the three forms otherwise."""
    text = text.strip()
    if text in ZOO:
        entry = ZOO[text]
        return StudentRef("zoo", text, entry=entry, hub_id=entry.hub_id, path=entry.path, revision=entry.revision)
    local = Path(text).expanduser()
    if local.exists():
        return StudentRef("local", text, local=local)
    match = _HUB_REF.fullmatch(text)
    if match and not text.startswith((".", "/", "~")):
        return StudentRef("hub", text, hub_id=match["repo"], path=(match["path"] or "").strip("/"),
                          revision=match["revision"])
    raise UsageError(f"--student {text!r} is not a zoo name ({', '.join(ZOO)}), an existing local file or folder, "
                     "or a Hugging Face reference owner/name[@revision][/path/in/repo]")


def describe_zoo() -> list[str]:
    """`bench list` lines: each entry with its method, teacher, preset and printed numbers."""
    lines = []
    for entry in ZOO.values():
        steps = ",".join(map(str, entry.steps))
        lines.append(f"  {entry.name:<20} {entry.summary}")
        lines.append(f"  {'':<20} {entry.reference} ({entry.format}); method {entry.method}, teacher {entry.teacher}; "
                     f"steps {steps}, guidance {entry.guidance_scale:g}, {entry.scheduler}")
        printed = "; ".join(f"{n.suite} {n.metric} {n.value:g} at {n.steps} step(s) ({n.source})" for n in entry.paper)
        lines.append(f"  {'':<20} printed: {printed or 'none'}")
    return lines


__all__ = ["ZOO", "ZooEntry", "PaperNumber", "StudentRef", "STUDENT_FORMATS", "parse_student_ref", "describe_zoo"]
