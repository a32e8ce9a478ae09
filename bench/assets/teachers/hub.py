"""Teachers from the Hugging Face Hub: the cache first, a bounded-time download otherwise, and one
clear error naming the repo, the cache searched and the ways to provide it when neither works."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.assets.teachers.folders import (
    _component_needs,
    _folder_resolution,
    _found_files,
    _load_folder,
    _missing,
    _Need,
    _teacher_needs,
    _weights_digest,
)
from bench.assets.teachers.model import (
    TEACHER_PATH_ENV,
    TEACHER_SPECS,
    Teacher,
    TeacherSpec,
)
from bench.core.errors import MissingResourceError, UsageError

logger = logging.getLogger(__name__)

HUB_TIMEOUT_ENV = "BENCH_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT_S = 5.0


# ------------------------------------------------------------------------------------------------
# Hugging Face Hub
# ------------------------------------------------------------------------------------------------


def hf_hub_cache_dir() -> Path:
    """Where huggingface_hub keeps models, read from the environment at call time (the library reads
    it once at import): $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
    ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_timeout() -> float:
    raw = os.environ.get(HUB_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_HUB_TIMEOUT_S
    except ValueError:
        raise UsageError(f"{HUB_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


@dataclass
class _HubRepo:
    """One repo a hub teacher needs, and where it stands in the local cache."""

    repo_id: str
    revision: str | None
    needs: list[_Need]
    snapshot: Path | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.snapshot is not None and not self.missing


def _find_cached(repo: _HubRepo, cache_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo.repo_id, revision=repo.revision, cache_dir=str(cache_dir),
                                   local_files_only=True)
    except Exception as err:  # LocalEntryNotFoundError and friends
        # huggingface_hub >= 2 calls a snapshot "incomplete" when any file of the repo is absent, but
        # a teacher needs only some of them (we download those alone): check them ourselves.
        folder = getattr(err, "snapshot_path", None)
        if folder is None:
            logger.debug("no cached snapshot of %s: %s", repo.repo_id, err)
            repo.snapshot, repo.missing = None, [need.describe() for need in repo.needs]
            return
    repo.snapshot = Path(folder)
    repo.missing = _missing(repo.snapshot, repo.needs)


def _download(repo: _HubRepo, cache_dir: Path, timeout: float) -> None:
    """Probe the Hub with a bounded request, then fetch only the files the teacher needs."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    info = HfApi(endpoint=endpoint).model_info(repo.repo_id, revision=repo.revision, timeout=timeout)
    present = {sibling.rfilename for sibling in (info.siblings or [])}
    chosen, absent = [], []
    for need in repo.needs:
        group = need.choose(present)
        if group is None:
            absent.append(need.describe())
        else:
            chosen.extend(group)
    # the small files beside them (tokenizer_config.json, special_tokens_map.json, ...) come along
    chosen += [f"{folder}/*" for folder in ("tokenizer", "scheduler") if any(n.startswith(f"{folder}/") for n in chosen)]
    if absent:
        raise MissingResourceError(
            f"Hugging Face repo {repo.repo_id} (revision {info.sha}) lacks {'; '.join(absent)}: "
            "it is not a diffusers-format Stable Diffusion repo"
        )
    logger.info("downloading %d files of %s@%s to %s", len(chosen), repo.repo_id, info.sha, cache_dir)
    folder = snapshot_download(repo.repo_id, revision=info.sha, cache_dir=str(cache_dir), allow_patterns=chosen,
                               etag_timeout=timeout, endpoint=endpoint)
    repo.snapshot = Path(folder)
    repo.missing = _missing(repo.snapshot, repo.needs)


def _include_args(repo: _HubRepo) -> str:
    """``--include`` patterns for just the files a teacher loads (SD repos also hold multi-GB
    single-file checkpoints and fp16/non-EMA variants that are not needed)."""
    patterns = []
    for need in repo.needs:
        for name in need.options[0]:
            folder = name.rpartition("/")[0]
            small = name.endswith((".json", ".txt"))
            pattern = f"{folder}/*.json" if small and folder else name
            if folder == "tokenizer" and small:
                pattern = "tokenizer/*"
            if pattern not in patterns:
                patterns.append(pattern)
    return "--include " + " ".join(f"'{p}'" for p in patterns)


def _missing_message(spec: TeacherSpec, repos: list[_HubRepo], cache_dir: Path, reason: str) -> str:
    lines = [f"teacher {spec.name!r} needs weights that are not available: {reason}."]
    for repo in repos:
        where = f"Hugging Face model {repo.repo_id} (revision {repo.revision or 'main'})"
        if repo.snapshot is None:
            lines.append(f"  - {where}: not in the cache")
        elif repo.missing:
            lines.append(f"  - {where}: the cached snapshot {repo.snapshot.name} lacks {'; '.join(repo.missing)}")
    if spec.hub_id == TEACHER_SPECS["sd15"].hub_id:
        lines.append("  (SD-1.5's former id runwayml/stable-diffusion-v1-5 was removed from the Hub; "
                     "this is its mirror)")
    lines.append(f"Searched the Hugging Face cache at {cache_dir} (set by HF_HUB_CACHE or HF_HOME; "
                 "default ~/.cache/huggingface/hub).")
    fetch = " and ".join(f"`hf download {r.repo_id} {_include_args(r)}`" for r in repos if not r.ready)
    lines.append(f"Fix: on a machine with internet run {fetch} (older huggingface_hub: `huggingface-cli download` "
                 "with the same arguments) and copy the cache here (or point HF_HUB_CACHE at it); or pass a local "
                 f"diffusers-format copy with --teacher-path DIR (or {TEACHER_PATH_ENV}=DIR).")
    if spec.vae_id:
        lines.append(f"A local copy for {spec.name!r} must hold the VAE to use in DIR/vae "
                     f"(for this teacher: the files of {spec.vae_id}).")
    return "\n".join(lines)


def _load_from_hub(spec: TeacherSpec, revision: str | None, device, dtype, vae_upcast) -> Teacher:
    cache_dir = hf_hub_cache_dir()
    repos = [_HubRepo(spec.hub_id, revision or spec.revision, _teacher_needs(with_vae=spec.vae_id is None))]
    if spec.vae_id:
        repos.append(_HubRepo(spec.vae_id, spec.vae_revision, _component_needs(spec.vae_subfolder, "diffusers")))
    for repo in repos:
        _find_cached(repo, cache_dir)
    pending = [repo for repo in repos if not repo.ready]
    if pending:
        if hf_offline():
            raise MissingResourceError(_missing_message(spec, repos, cache_dir,
                                                        "they are not in the cache and HF_HUB_OFFLINE is set"))
        timeout = _hub_timeout()
        for repo in pending:
            try:
                _download(repo, cache_dir, timeout)
            except MissingResourceError:
                raise
            except Exception as err:  # no network, DNS failure, timeout, 401/404, ...
                detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                raise MissingResourceError(_missing_message(
                    spec, repos, cache_dir,
                    f"they are not in the cache and the Hub could not be reached ({detail}; "
                    f"probe timeout {timeout:g} s, {HUB_TIMEOUT_ENV})")) from None
            if not repo.ready:
                raise MissingResourceError(_missing_message(spec, repos, cache_dir, "the download was incomplete"))
    main = repos[0]
    files = _found_files(main.snapshot, main.needs, f"{main.repo_id}/")
    identity: dict[str, Any] = {
        "name": spec.name,
        "source": "huggingface",
        "hub_id": spec.hub_id,
        "revision": main.snapshot.name,  # the snapshot folder is named by its commit sha
    }
    if spec.vae_id:
        vae_repo = repos[1]
        files.update(_found_files(vae_repo.snapshot, vae_repo.needs, f"{vae_repo.repo_id}/"))
        identity.update(vae_id=spec.vae_id, vae_revision=vae_repo.snapshot.name)
        vae_root, vae_subfolder = vae_repo.snapshot, spec.vae_subfolder
    else:
        vae_root, vae_subfolder = main.snapshot, "vae"
    identity["weights"] = _weights_digest(files)
    # the side the weights are built for (512 for the SD-1.5 repos, as the spec says; a test's
    # tiny stand-in under the same id samples at its own 16 px)
    resolution = _folder_resolution(main.snapshot, vae_root, vae_subfolder)
    return _load_folder(spec.name, main.snapshot, vae_root, vae_subfolder, resolution,
                        spec.default_guidance_scale, identity, device, dtype, vae_upcast)
