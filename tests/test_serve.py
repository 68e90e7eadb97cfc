"""`python app.py [--share]`: a share link that cannot be made ends the process with status 1
and one clear line, never a hang; one that can is printed while the app keeps serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import uvicorn
from fastapi import FastAPI
from gradio import networking

from server import serving
from server.settings import Settings
from tests.conftest import REPO

CLOSED = "http://127.0.0.1:9"  # nothing listens here: every outbound request fails at once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_app_share_without_a_reachable_share_server_exits_1_with_one_line():
    # Every outbound request goes to a closed proxy, so this fails the same with or without internet.
    env = {**os.environ, "PYTHONPATH": str(REPO), "HTTPS_PROXY": CLOSED, "HTTP_PROXY": CLOSED, "ALL_PROXY": CLOSED, "NO_PROXY": ""}
    env.pop("GRADIO_SHARE_SERVER_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "app.py", "--share", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not create a Gradio share link: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_share_link_is_printed_and_the_app_keeps_serving(monkeypatch, capsys):
    servers: list[uvicorn.Server] = []
    original_run = uvicorn.Server.run

    def recording_run(self: uvicorn.Server, *args, **kwargs):
        servers.append(self)
        return original_run(self, *args, **kwargs)

    def fake_tunnel(host: str, port: int, token: str, *_: object) -> str:
        assert (host, port) == ("127.0.0.1", chosen) and len(token) > 20
        assert servers[0].started  # the tunnel is opened to a server that already listens
        servers[0].should_exit = True  # end the test run once the link is out
        return "https://0123456789abcdef.gradio.live"

    chosen = free_port()
    monkeypatch.setattr(uvicorn.Server, "run", recording_run)
    monkeypatch.setattr(networking, "setup_tunnel", fake_tunnel)
    status = serving.serve(lambda settings: FastAPI(), Settings(log_level="WARNING"), host="0.0.0.0", port=chosen, share=True)
    assert status == 0
    assert "* Running on public URL: https://0123456789abcdef.gradio.live" in capsys.readouterr().out


def test_share_failure_in_process_is_status_1(monkeypatch, capsys):
    def failing_tunnel(*_: object) -> str:
        raise RuntimeError("Could not get share link from Gradio API Server.") from OSError("network is unreachable")

    monkeypatch.setattr(networking, "setup_tunnel", failing_tunnel)
    status = serving.serve(lambda settings: FastAPI(), Settings(log_level="WARNING"), host="127.0.0.1", port=free_port(), share=True)
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "error: could not create a Gradio share link: Could not get share link from Gradio API Server. "
        "(OSError: network is unreachable). It needs internet access to api.gradio.app and the share servers; "
        "run without --share / GRADIO_SHARE to serve locally."
    )
