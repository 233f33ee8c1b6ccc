"""A real ComfyUI server for the real-host tier: start, talk to (/prompt, /history), stop.

Only the standard library is used here, so the tier runs from any Python that has pytest
(the browser test also needs the ``playwright`` package and Debian's chromium).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PACK_LINK_NAME = "comfyui-lipar"   # the folder name users get from cloning the pack
# Files a person may want to look at after a run (screenshots, logs); conftest prints them.
ARTIFACTS: list[str] = []


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


class ComfyServer:
    """``main.py --cpu`` on a free loopback port with its own base directory (models, custom
    nodes, input, output, temp and user all live there) and an in-memory database."""

    def __init__(self, comfy_dir: str, python: str, base: str, port: int | None = None):
        self.comfy_dir, self.python, self.base = comfy_dir, python, base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> "ComfyServer":
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
               "--preview-method", "latent2rgb"]   # latent previews on, as most users run ComfyUI
        self._log = open(self.log_path, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}; log:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/object_info/KSampler", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        else:
            self.stop()
            raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log()[-4000:]}")
        self.startup_seconds = time.perf_counter() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()                     # only the process this object started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # ---- HTTP ------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 60.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
                return (json.loads(raw) if "json" in ctype else raw), r.status
        except urllib.error.HTTPError as e:
            raise HTTPError(e.code, e.read().decode(errors="replace")) from None

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)[0]

    def post(self, path: str, body, **kw):
        return self.request("POST", path, body, **kw)[0]

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        return self.post("/prompt", body)["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                if h[prompt_id]["status"].get("status_str") in ("success", "error"):
                    return h[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s; log tail:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, client_id: str | None = None, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt, client_id), timeout)

    def view_bytes(self, item: dict) -> bytes:
        q = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request("GET", "/view?" + q)[0]

    def file_path(self, item: dict) -> str:
        folder = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
        return os.path.join(self.base, folder, item.get("subfolder", ""), item["filename"])


def execution_error(history: dict) -> str:
    """A readable summary of a failed prompt's execution_error message."""
    for name, data in history.get("status", {}).get("messages", []):
        if name == "execution_error":
            return (f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message')}\n{''.join(data.get('traceback') or [])}")
    return json.dumps(history.get("status"))[:3000]


def run_comfy_python(comfy, script: str, *args: str, timeout: float = 600.0) -> str:
    """Run one of this folder's scripts with ComfyUI's Python; return its last stdout line."""
    proc = subprocess.run([comfy["python"], os.path.join(HERE, script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout.strip().splitlines()[-1]
