"""Model downloads: one policy switch, the Hugging Face hub for the named weights only, and where they came from.

Policy (``download_policy()``), first match wins:

    HF_HUB_OFFLINE=1                      -> off (the hub library itself refuses every request)
    --allow-downloads / the app's toggle  -> on   (both set CEDM_ALLOW_DOWNLOADS)
    CEDM_ALLOW_DOWNLOADS=1 / =0           -> on / off
    SPACE_ID set (a Hugging Face Space)   -> on
    otherwise                             -> off: offline is the default

Weights are looked up in the standard HF cache first (``HF_HUB_CACHE`` / ``HF_HOME``, read at each call, so a
test or a user can move it); only when they are missing and downloads are on does ``hf_hub_download`` fetch
the one named file from ``HF_ENDPOINT``. Telemetry and analytics stay off (set before huggingface_hub or
gradio are imported). Every file used is described by a :class:`WeightsFile` (repo, resolved commit, file,
sha256) that artifacts record in their meta.json.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cedm.errors import CedmError

ALLOW_ENV = "CEDM_ALLOW_DOWNLOADS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
Progress = Callable[[int, int, str], None]

# No usage reporting from the libraries cedm uses; setdefault, so a user's explicit choice stands.
for _k, _v in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(_k, _v)


# --- the policy ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadPolicy:
    allowed: bool
    reason: str   # what decided it, in words ("--allow-downloads", "offline by default", ...)


def _flag(name: str) -> bool | None:
    v = os.environ.get(name, "").strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set now, or was when huggingface_hub was imported."""
    import sys

    if _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and getattr(constants, "HF_HUB_OFFLINE", False))


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def download_policy() -> DownloadPolicy:
    if hub_offline():
        return DownloadPolicy(False, "HF_HUB_OFFLINE is set")
    explicit = _flag(ALLOW_ENV)
    if explicit is not None:
        return DownloadPolicy(explicit, f"{ALLOW_ENV}={os.environ[ALLOW_ENV].strip()}")
    if on_space():
        return DownloadPolicy(True, "running on a Hugging Face Space")
    return DownloadPolicy(False, "offline by default")


def downloads_allowed() -> bool:
    return download_policy().allowed


def set_allow_downloads(allowed: bool) -> None:
    """The one switch (CLI --allow-downloads, the app's toggle): process-wide, inherited by child processes."""
    os.environ[ALLOW_ENV] = "1" if allowed else "0"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cache_dir() -> str:
    """The standard HF hub cache, read from the environment now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    import huggingface_hub.constants as c  # the library's default (~/.cache/huggingface/hub), or a patched one
    return c.HF_HUB_CACHE


# --- download progress -----------------------------------------------------------------------------------
_PROGRESS: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("cedm_download_progress", default=None)


@contextlib.contextmanager
def download_progress(progress: Progress | None) -> Iterator[None]:
    """Report the bytes of any download inside this block to ``progress(done, total, desc)`` (the app's bar);
    without one, huggingface_hub's own tqdm bar shows on the terminal."""
    token = _PROGRESS.set(progress)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _tqdm_class(progress: Progress | None, desc: str):
    if progress is None:
        return None
    from tqdm.auto import tqdm

    class Forward(tqdm):  # hf_hub_download drives a tqdm; forward its counts to the callback
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)
            self._done = 0

        def update(self, n=1):
            self._done += int(n or 0)
            progress(self._done, int(self.total or 0), desc)

    return Forward


# --- files -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsFile:
    """A weights file and where it came from: recorded in every artifact it produced."""
    path: str
    source: str                  # 'hf-hub', 'pypi', 'url', 'file'
    repo: str | None = None      # hub repo id, package or URL
    revision: str | None = None  # the resolved commit
    filename: str | None = None

    @property
    def sha256(self) -> str:
        from cedm.io import file_sha256
        return file_sha256(self.path)

    def record(self) -> dict:
        return {"source": self.source, "repo": self.repo, "revision": self.revision, "filename": self.filename,
                "sha256": self.sha256}


class DownloadsOff(CedmError):
    """The weights are not cached and the policy forbids downloading them."""


class DownloadFailed(CedmError):
    """Downloads are on, but the hub could not be reached or refused."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the endpoint, so that no internet fails in seconds instead of a minute of retries."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the download try
    url = urlparse(endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _revision_of(path: str) -> str | None:
    """The commit of a cached hub file: its snapshot folder (<cache>/models--a--b/snapshots/<commit>/file)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def cached_hub_file(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> WeightsFile | None:
    """The first of ``filenames`` already in the local HF cache, or None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir(), revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return WeightsFile(found, "hf-hub", repo, _revision_of(found), name)
    return None


def hub_file(repo: str, filenames: tuple[str, ...], revision: str | None = None) -> WeightsFile:
    """The first of ``filenames`` in hub repo ``repo``: from the cache, else downloaded when the policy allows.

    Raises :class:`DownloadsOff` (not cached, downloads off: nothing touched the network) or
    :class:`DownloadFailed` (the hub is unreachable, or has none of the files)."""
    found = cached_hub_file(repo, filenames, revision)
    if found is not None:
        return found
    policy = download_policy()
    if not policy.allowed:
        raise DownloadsOff(f"{repo} is not in the local model cache and downloads are off ({policy.reason})")
    if not _hub_reachable():
        raise DownloadFailed(f"cannot reach the model hub at {endpoint()}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    progress = _PROGRESS.get()
    for name in filenames:
        try:
            path = hf_hub_download(repo, name, revision=revision, cache_dir=cache_dir(), endpoint=endpoint(),
                                   tqdm_class=_tqdm_class(progress, f"downloading {repo}/{name}"))
        except EntryNotFoundError:
            continue  # the repo has the next name instead
        except RevisionNotFoundError:
            raise DownloadFailed(f"{repo} has no revision {revision!r}") from None
        except Exception as e:  # no connection, repository missing, server errors
            first = (str(e).splitlines() or [type(e).__name__])[0][:200].rstrip(".")
            raise DownloadFailed(f"{repo}/{name} could not be downloaded from {endpoint()} "
                                 f"({type(e).__name__}: {first})") from None
        return WeightsFile(path, "hf-hub", repo, _revision_of(path), name)
    raise DownloadFailed(f"{repo} has none of {', '.join(filenames)}")


def missing_message(what: str, alternatives: str, error: Exception | None = None) -> str:
    """One sentence: why ``what`` (e.g. 'the dino_vitb16 weights') is missing, how to allow downloads, and the
    caller's offline ``alternatives``."""
    if isinstance(error, DownloadsOff):
        allow = ("unset HF_HUB_OFFLINE and pass --allow-downloads" if hub_offline() else
                 f"allow them with --allow-downloads (or {ALLOW_ENV}=1, or the app's settings)")
        return (f"{what} are not in the local model cache and downloads are off ({download_policy().reason}): "
                f"{allow}, {alternatives}")
    detail = f" ({error})" if isinstance(error, DownloadFailed) else \
        " (no internet connection or the model hub is unreachable)"
    return f"{what} could not be downloaded{detail}: {alternatives}"


def file_record(path: str | os.PathLike, source: str = "file", repo: str | None = None) -> WeightsFile:
    """A local (or package-shipped) weights file as a :class:`WeightsFile`."""
    return WeightsFile(str(path), source, repo, None, Path(path).name)


__all__ = ["ALLOW_ENV", "DownloadFailed", "DownloadPolicy", "DownloadsOff", "WeightsFile", "cache_dir",
           "cached_hub_file", "download_policy", "download_progress", "downloads_allowed", "endpoint",
           "file_record", "hub_file", "hub_offline", "missing_message", "on_space", "set_allow_downloads"]
