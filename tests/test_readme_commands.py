"""The README's two set-up commands, as a new user runs them on a fresh clone."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.heavy


def setup_commands() -> list[str]:
    """The bash blocks of the README's first section ("## Set up")."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_start, run_tests = setup_commands()
    assert "app.py" in install_and_start and "pytest" in run_tests
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert run_tests in ci_lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_install_and_start_on_a_fresh_clone(tmp_path: Path):
    clone = tmp_path / "deepshield"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    install_and_start, _ = setup_commands()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSHIELD_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING"})
    log = (tmp_path / "app.log").open("w")
    process = subprocess.Popen(["bash", "-c", install_and_start], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 1200  # a cold pip install of torch + gradio takes minutes
        page = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                time.sleep(1)
        assert page is not None, f"the app never served a page (exit {process.poll()}):\n{(tmp_path / 'app.log').read_text()[-3000:]}"
        assert "gradio" in page.lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert b'"status":"ok"' in response.read().replace(b" ", b"")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
        log.close()
