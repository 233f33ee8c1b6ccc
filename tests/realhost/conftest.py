"""Real-host tier: runs only when LIPAR_COMFYUI points at a ComfyUI checkout.

    LIPAR_COMFYUI=/path/to/ComfyUI [LIPAR_COMFYUI_PYTHON=/path/to/python] python -m pytest -q tests/realhost

LIPAR_COMFYUI_PYTHON defaults to the checkout's .venv/bin/python. Every test here is
skipped, with the reason, when either is missing. See tests/realhost/README.md.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from comfy_host import ARTIFACTS, PACK_LINK_NAME, ComfyServer, run_comfy_python  # noqa: E402


def comfy_setup() -> tuple[str | None, str | None, str | None]:
    """(comfy_dir, python, reason-to-skip)."""
    comfy = os.environ.get("LIPAR_COMFYUI")
    if not comfy:
        return None, None, ("real-host tier: set LIPAR_COMFYUI to a ComfyUI checkout (and optionally "
                            "LIPAR_COMFYUI_PYTHON, default <checkout>/.venv/bin/python) to run it; "
                            "see tests/realhost/README.md")
    comfy = os.path.abspath(os.path.expanduser(comfy))
    if not os.path.isfile(os.path.join(comfy, "main.py")):
        return None, None, f"real-host tier: LIPAR_COMFYUI={comfy} is not a ComfyUI checkout (no main.py)"
    py = os.environ.get("LIPAR_COMFYUI_PYTHON") or os.path.join(comfy, ".venv", "bin", "python")
    if not (os.path.isfile(py) and os.access(py, os.X_OK)):
        return None, None, (f"real-host tier: ComfyUI's Python {py} does not exist; set LIPAR_COMFYUI_PYTHON "
                            "or run tests/realhost/setup_comfyui.sh")
    return comfy, py, None


def pytest_collection_modifyitems(config, items):
    _, _, reason = comfy_setup()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if ARTIFACTS:
        terminalreporter.write_sep("-", "LIPAR real-host artifacts")
        for line in ARTIFACTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def comfy():
    comfy_dir, py, reason = comfy_setup()
    if reason:
        pytest.skip(reason)
    return {"dir": comfy_dir, "python": py}


@pytest.fixture(scope="session")
def host_base(comfy, tmp_path_factory):
    """A ComfyUI base directory with the tiny models, the clip, the conditioning shard and
    the pack linked into custom_nodes/ (as a developer's checkout would be)."""
    base = str(tmp_path_factory.mktemp("comfy_base"))
    summary = json.loads(run_comfy_python(comfy, "make_fixtures.py", comfy["dir"], base))
    os.symlink(ROOT, os.path.join(base, "custom_nodes", PACK_LINK_NAME))
    print(f"\n[realhost] base directory {base}: {summary}")
    return base


@pytest.fixture(scope="session")
def server(comfy, host_base):
    srv = ComfyServer(comfy["dir"], comfy["python"], host_base)
    srv.start()
    ARTIFACTS.append(f"ComfyUI server log: {srv.log_path}")
    print(f"\n[realhost] ComfyUI at {srv.url} (started in {srv.startup_seconds:.1f} s, log {srv.log_path})")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory):
    """Where screenshots and other files a person may want to look at go (path printed)."""
    d = os.environ.get("LIPAR_REALHOST_ARTIFACTS") or str(tmp_path_factory.mktemp("artifacts"))
    os.makedirs(d, exist_ok=True)
    return d
