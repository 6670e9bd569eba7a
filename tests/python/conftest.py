"""Starts real `wick serve` processes on free ports for the tests.

The binary is $WICK_BIN (scripts/test.sh builds it), else target/release/wick or
target/debug/wick. The model is $WICK_TEST_MODEL_TINY (a small model folder or GGUF) or
$WICK_TEST_MODEL_SMOLLM2 (the SmolLM2-135M-Instruct Q4_1 GGUF); without either the suite is
skipped with a notice (scripts/test.sh always sets one).
"""

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "test-model"


def _binary():
    env = os.environ.get("WICK_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for p in (target / "release" / "wick", target / "debug" / "wick"):
        if p.exists():
            return str(p)
    pytest.fail("no wick binary: set WICK_BIN or build with `cargo build --release -p wick-server`")


def _model():
    return os.environ.get("WICK_TEST_MODEL_TINY") or os.environ.get("WICK_TEST_MODEL_SMOLLM2")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `wick serve`, its base URL and process."""

    def __init__(self, *extra, model=None, env=None):
        model = model or _model()
        if not model:
            pytest.skip("WICK_TEST_MODEL_SMOLLM2 / WICK_TEST_MODEL_TINY unset: notice, python server tests not run")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(f"/tmp/wick-pytest-{self.port}.log", "w+")
        cmd = [_binary(), "serve", "--model", model, "--port", str(self.port), "--served-model-name", MODEL_NAME,
               "--offline", *extra]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WICK_")}, **(env or {})}
        # The response store goes to a throwaway folder, not the user's data folder, unless the
        # test names one (--data-dir or --responses-store win over this).
        env.setdefault("WICK_DATA_DIR", tempfile.mkdtemp(prefix="wick-pytest-data-"))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"wick serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"wick serve not ready in time:\n{self.log_text()}")

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def rss_kib(self, field="VmRSS"):
        """The server's resident memory (or peak, with field="VmHWM") in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def metrics(self):
        """Every sample by its full name (labels included); a labelled sample also counts
        towards its bare name, summed over label sets (e.g. over `model_name`)."""
        text = requests.get(self.url + "/metrics", timeout=5).text
        out, summed = {}, {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
                bare = name.split("{", 1)[0]
                if bare != name:
                    summed[bare] = summed.get(bare, 0.0) + float(value)
        return {**summed, **out}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def spawn():
    """Starts extra servers with their own flags; stops them after the test."""
    started = []

    def start(*extra, **kwargs):
        s = Server(*extra, **kwargs)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
