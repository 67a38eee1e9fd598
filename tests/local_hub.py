"""A local stand-in for the Hugging Face hub (the part of its protocol hf_hub_download speaks), and the small
models the download tests serve from it.

The server listens on 127.0.0.1 only, answers from files the test made, and logs every request:

    HEAD/GET /<org>/<name>/resolve/<revision>/<file>
        revision 'main' or the repo's commit; an LFS-style answer: 302 to the "CDN" (a second port, so another
        origin, which hf_hub_download does not follow for the metadata) with X-Repo-Commit, X-Linked-Etag
        (the sha256) and X-Linked-Size; a missing file: 404 X-Error-Code EntryNotFound (with the commit);
        a missing repo: 404 RepoNotFound; an unknown revision: 404 RevisionNotFound
    HEAD/GET /<old-org>/<old-name>/resolve/...   for a renamed repo: 307 relative redirect to the new name
    GET /cdn/<sha256>                            the bytes (Content-Length, ETag)
    GET /files/<name>                            a plain file (like pytorch-fid's release download)

Run as a script it registers the tiny CLIP model and then runs the cedm command line in this process:
``python tests/local_hub.py CFG_DIR -- features ws --backbone dinov2_vits14 ...``.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

TINY_CLIP = "cedm-hubtest-clip"
TINY_CLIP_TAG = "hubtest"
TINY_CLIP_REPO = "cedm-test/tiny-clip"
DINOV2_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
MAX_REQUESTS = 500            # bounded: anything beyond is refused with 503


class LocalHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}      # repo -> {"commit": sha1, "files": {name: (sha256, bytes path)}}
        self.renamed: dict[str, str] = {}     # old repo id -> new repo id
        self.blobs: dict[str, Path] = {}
        self.static: dict[str, Path] = {}     # /files/<name> -> file
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[http.server.ThreadingHTTPServer] = []

    # --- content --------------------------------------------------------------------------------
    def add_file(self, repo: str, filename: str, path: Path) -> str:
        sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        entry = self.repos.setdefault(repo, {"commit": hashlib.sha1(repo.encode()).hexdigest(), "files": {}})
        entry["files"][filename] = sha
        self.blobs[sha] = Path(path)
        return sha

    # --- serving --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "LocalHub":
        for _ in range(2):  # the hub, and its "CDN" on another port (another origin)
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            self._servers.append(srv)
        return self

    def close(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()

    def seen(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.requests)

    def _log(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests.append((method, path))
            return len(self.requests) <= MAX_REQUESTS


def _handler(hub: LocalHub):
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a thread for long

        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, headers: dict | None = None, body: bytes = b"") -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)) if code != 302 else "0")
            self.end_headers()
            if self.command == "GET" and body:
                self.wfile.write(body)

        def do_HEAD(self):
            self._answer()

        def do_GET(self):
            self._answer()

        def _answer(self):
            if not hub._log(self.command, self.path):
                return self._send(503)
            parts = [unquote(p) for p in self.path.split("?")[0].strip("/").split("/")]
            if len(parts) == 2 and parts[0] == "cdn" and parts[1] in hub.blobs:
                data = hub.blobs[parts[1]].read_bytes()
                return self._send(200, {"ETag": f'"{parts[1]}"', "Content-Type": "application/octet-stream"}, data)
            if len(parts) == 2 and parts[0] == "files" and parts[1] in hub.static:
                return self._send(200, {"Content-Type": "application/octet-stream"}, hub.static[parts[1]].read_bytes())
            if len(parts) < 5 or parts[2] != "resolve":
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found")
            repo, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            if repo in hub.renamed:  # like the hub after a rename: a relative redirect to the new name
                new = hub.renamed[repo]
                return self._send(307, {"Location": f"/{new}/resolve/{revision}/{filename}"})
            entry = hub.repos.get(repo)
            if entry is None:
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found")
            if revision not in ("main", entry["commit"]):
                return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found")
            common = {"X-Repo-Commit": entry["commit"]}
            sha = entry["files"].get(filename)
            if sha is None:
                return self._send(404, {**common, "X-Error-Code": "EntryNotFound"}, b"Entry not found")
            size = hub.blobs[sha].stat().st_size
            self._send(302, {**common, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": size, "ETag": '"git-sha1"',
                             "Location": f"{hub.cdn}/cdn/{sha}"})

    return Handler


# --- the models the tests serve ------------------------------------------------------------------------
def register_tiny_clip(cfg_dir: Path) -> None:
    """A small CLIP architecture (the standard text tower shape, so the real tokenizer is used) and a
    pretrained tag for it whose weights are on the hub repo TINY_CLIP_REPO, in open_clip's registries."""
    import open_clip
    from open_clip import pretrained

    cfg_dir = Path(cfg_dir)
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (cfg_dir / f"{TINY_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    pretrained._PRETRAINED[TINY_CLIP] = {TINY_CLIP_TAG: pretrained._pcfg(hf_hub=f"{TINY_CLIP_REPO}/")}


def unregister_tiny_clip() -> None:
    from open_clip import factory, pretrained

    pretrained._PRETRAINED.pop(TINY_CLIP, None)
    factory._MODEL_CONFIGS.pop(TINY_CLIP, None)


def make_weights(folder: Path) -> dict[str, Path]:
    """Random-init weights saved as the hub has them: timm's DINOv2 ViT-S/14 (model.safetensors, the registry's
    own architecture) and the tiny CLIP's whole checkpoint (open_clip_model.safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from cedm.features import backbones as bb

    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # not the registry's random-init seed: the loaded weights must differ from it
        vit = bb.get_spec("dinov2_vits14").create()
        clip = open_clip.create_model(TINY_CLIP, pretrained=None)
    out = {"dinov2": folder / "model.safetensors", "clip": folder / "open_clip_model.safetensors"}
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(out["dinov2"]))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out["clip"]))
    return out


if __name__ == "__main__":  # register the tiny CLIP, then run one or more cedm commands (separated by '--')
    register_tiny_clip(Path(sys.argv[1]))
    from cedm.cli import main

    commands, current = [], []
    for a in sys.argv[3:] + ["--"]:
        if a == "--":
            commands.append(current)
            current = []
        else:
            current.append(a)
    for argv in commands:
        rc = main(argv)
        if rc:
            raise SystemExit(rc)
