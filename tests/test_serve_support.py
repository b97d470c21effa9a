"""What the `imagegen serve` tests share (no tests here): a real server on 127.0.0.1 with an ephemeral port, in a
thread of the test process or as a subprocess, always stopped; a tiny-model preset with small defaults."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 300  # a loaded 2-core machine: imports, model load
ROOT = Path(__file__).resolve().parent.parent


def tiny_preset(model_dir: Path, folder: Path, name: str = "tiny") -> Path:
    """A preset file for the tiny random model with small defaults (4 + 4 steps, 32x32)."""
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nprior = "{model_dir / "prior"}"\ndecoder = "{model_dir / "decoder"}"\n'
                    "[prior_defaults]\nsteps = 4\n[decoder_defaults]\nsteps = 4\nwidth = 32\nheight = 32\n")
    return path


def wait_healthy(base: str, timeout: float = START_TIMEOUT_S, alive=lambda: True) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server stopped before it was ready")
        try:
            response = httpx.get(f"{base}/health", timeout=5)
            if response.status_code == 200:
                return response.json()
            if response.json().get("status") == "error":
                raise RuntimeError(f"the server could not load its model: {response.json()}")
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base}/health was not OK within {timeout} s")


class ThreadServer:
    """create_app(options) under uvicorn in a thread of this process; `.server` is the app's state."""

    def __init__(self, options):
        import uvicorn

        from imagegen.serve.app import create_app

        self.app = create_app(options)
        self.server = self.app.state.server
        self._sock = socket.socket()
        self._sock.bind((HOST, 0))
        self.port = self._sock.getsockname()[1]
        self.base = f"http://{HOST}:{self.port}"
        self._uvicorn = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self._thread.start()
        try:
            wait_healthy(self.base, alive=self._thread.is_alive)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(60)
        self._sock.close()


class ProcessServer:
    """`imagegen serve ARGS --port 0` as a subprocess; stopped with SIGTERM (killed if it does not stop)."""

    def __init__(self, *args: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.proc = subprocess.Popen([sys.executable, "-m", "imagegen", "serve", "--port", "0", *map(str, args)],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._stderr: list[str] = []
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()
        self.port = None
        self.base = ""

    def __enter__(self) -> "ProcessServer":
        try:
            line = self._first_line()
            self.port = json.loads(line)["port"]
            self.base = f"http://{HOST}:{self.port}"
            wait_healthy(self.base, alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self) -> str:
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        if not found or not found[0]:
            raise RuntimeError(f"imagegen serve did not start: {''.join(self._stderr)[-2000:]}")
        return found[0]

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 90) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()


def options(model, **changes):
    from imagegen.serve.options import ServeOptions

    return ServeOptions(model=str(model), **{"outputs": "none", "no_ui": True, **changes})
