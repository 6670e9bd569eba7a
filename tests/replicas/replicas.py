"""Three `wick serve` replicas on loopback behind Debian's nginx (scripts/test.sh installs it):
64 concurrent streams spread over the replicas, SIGTERM to one of them mid-run. Pass means no
accepted request is lost or truncated: streams in flight on the draining replica finish (each
ends with a finish_reason and `data: [DONE]`), and requests sent after the signal are served by
the other two (nginx retries a refused connection on the next upstream).

Usage: python3 tests/replicas/replicas.py   (needs nginx on PATH or in /usr/sbin)
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
MODEL = "replica-model"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary():
    return os.environ.get("WICK_BIN") or str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
                                             / "release" / "wick")


def wait_ready(url, proc, what):
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} not ready in time")


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream wick {{
        least_conn;
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://wick;
            proxy_http_version 1.1;
            # One upstream connection per request: a draining replica then refuses it outright.
            proxy_set_header Connection close;
            proxy_buffering off;
            proxy_read_timeout 300s;
            # A draining replica refuses new connections: retry those on the next one. A
            # request already sent is never retried (POST is not idempotent).
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def stream(url, i, results):
    body = {"model": MODEL, "stream": True, "max_tokens": 48, "ignore_eos": True, "temperature": 0.7,
            "messages": [{"role": "user", "content": f"Tell story number {i}."}]}
    try:
        r = requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=300)
        if r.status_code != 200:
            results[i] = f"status {r.status_code}: {r.text[:200]}"
            return
        # Split bytes (at \n only): JSON strings may hold U+2028, which str.splitlines splits on.
        data = [ln[6:].decode() for ln in r.iter_lines() if ln.startswith(b"data: ")]
        if not data or data[-1] != "[DONE]":
            results[i] = f"truncated: {data[-2:]}"
            return
        chunks = [json.loads(d) for d in data[:-1]]
        if any("error" in c for c in chunks):
            results[i] = f"error event: {[c for c in chunks if 'error' in c]}"
            return
        if not any(ch.get("finish_reason") == "length" for c in chunks for ch in c["choices"]):
            results[i] = "no finish_reason"
            return
        results[i] = "ok"
    except (requests.RequestException, ValueError) as e:
        results[i] = f"exception {e!r}"[:300]


def main():
    model = os.environ.get("WICK_TEST_MODEL_SMOLLM2")
    if not model:
        sys.exit("set WICK_TEST_MODEL_SMOLLM2")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    tmp = Path(tempfile.mkdtemp(prefix="wick-replicas-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICK_")}
    replicas = []
    for i in range(3):
        port = free_port()
        log = open(tmp / f"wick-{i}.log", "w")
        proc = subprocess.Popen([binary(), "serve", "--model", model, "--port", str(port), "--offline",
                                 "--served-model-name", MODEL, "--shutdown-timeout-secs", "120"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        replicas.append((port, proc))
    lb_port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p, _ in replicas)
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, servers=servers, port=lb_port))
    lb = subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
    try:
        for i, (p, proc) in enumerate(replicas):
            wait_ready(f"http://127.0.0.1:{p}/ready", proc, f"replica {i}")
        url = f"http://127.0.0.1:{lb_port}"
        wait_ready(url + "/ready", lb, "nginx")
        results = {}
        first = [threading.Thread(target=stream, args=(url, i, results)) for i in range(48)]
        for t in first:
            t.start()
        time.sleep(4)
        victim_port, victim = replicas[0]
        running = requests.get(f"http://127.0.0.1:{victim_port}/metrics", timeout=10).text
        victim.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        later = [threading.Thread(target=stream, args=(url, i, results)) for i in range(48, 64)]
        for t in later:
            t.start()
        for t in first + later:
            t.join()
        code = victim.wait(timeout=150)
        bad = {i: r for i, r in results.items() if r != "ok"}
        in_flight = [ln for ln in running.splitlines() if ln.startswith("wick:num_requests_running")]
        print(f"replicas: {len(results) - len(bad)}/64 streams complete; the SIGTERMed replica had {in_flight} "
              f"and exited with {code}")
        if bad or len(results) != 64 or code != 0:
            for i, r in sorted(bad.items()):
                print(f"FAIL stream {i}: {r}")
            sys.exit(f"replica test failed (logs in {tmp})")
        print("replica test passed")
    finally:
        for _, proc in replicas:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        lb.send_signal(signal.SIGQUIT)
        for _, proc in replicas:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            lb.wait(timeout=10)
        except subprocess.TimeoutExpired:
            lb.kill()


if __name__ == "__main__":
    main()
