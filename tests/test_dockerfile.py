"""No Docker engine runs here: read the Dockerfile and check what can be checked without building it."""
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cur += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    assert not cur, "Dockerfile ends inside a line continuation"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def ins():
    return instructions()


def test_base_image_is_a_build_argument_with_cpu_default(ins):
    assert ins[0][0] == "ARG"
    name, _, default = ins[0][1].partition("=")
    assert name == "BASE_IMAGE" and re.fullmatch(r"python:3\.1[1-9]-slim", default)
    froms = [a for k, a in ins if k == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    assert "BASE_IMAGE=nvidia/cuda:" in (ROOT / "Dockerfile").read_text()  # documented CUDA override


def test_installs_requirements_before_copying_the_code(ins):
    keys = [k for k, _ in ins]
    copy_req = next(i for i, (k, a) in enumerate(ins) if k == "COPY" and a.split()[0] == "requirements.txt")
    install = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and re.search(r"pip install .*-r requirements\.txt", a))
    copy_all = next(i for i, (k, a) in enumerate(ins) if k == "COPY" and a.split()[0] == ".")
    assert copy_req < install < copy_all
    assert keys.index("WORKDIR") < copy_req
    assert (ROOT / "requirements.txt").is_file()


def test_serves_app_on_7860_locally_configured(ins):
    assert ("EXPOSE", "7860") in ins
    cmd = [a for k, a in ins if k == "CMD"]
    assert len(cmd) == 1
    assert json.loads(cmd[0]) == ["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]
    env = " ".join(a for k, a in ins if k == "ENV")
    pairs = dict(p.split("=", 1) for p in shlex.split(env) if "=" in p)
    assert pairs["GRADIO_ANALYTICS_ENABLED"] == "False" and pairs["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert pairs["CEDM_ALLOW_DOWNLOADS"] == "0" and "HF_HUB_OFFLINE" not in pairs  # off, but one switch away
    assert (ROOT / "app.py").is_file()


def test_dockerignore_keeps_what_the_app_needs():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    for needed in ("app.py", "cedm", "assets", "requirements.txt", "checkpoints"):
        assert needed not in ignored
