"""Running the app: uvicorn on the FastAPI app, optionally behind a Gradio share link."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from server.settings import Settings

SHARE_TIMEOUT_S = 120.0


def _tunnel_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def open_share_link(host: str, port: int, timeout_s: float = SHARE_TIMEOUT_S) -> str:
    """A Gradio share link (https://*.gradio.live) forwarding to host:port; RuntimeError with a
    one-line reason when it cannot be made (no internet, blocked download, timeout)."""
    from gradio import networking  # Gradio's own tunnel: the same mechanism as launch(share=True)

    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["url"] = networking.setup_tunnel(_tunnel_host(host), port, secrets.token_urlsafe(32), None, None)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, name="deepshield-share", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RuntimeError(f"no answer from the Gradio share server within {timeout_s:.0f} s")
    if "error" in outcome:
        error = outcome["error"]
        cause = error.__cause__
        reason = _first_line(error)
        raise RuntimeError(f"{reason} ({type(cause).__name__}: {_first_line(cause)})" if cause is not None else reason)
    return str(outcome["url"])


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def _run(server: Any) -> None:
    """uvicorn's blocking run; Ctrl+C (re-raised by uvicorn after its graceful shutdown) ends it quietly."""
    try:
        server.run()
    except KeyboardInterrupt:
        pass


def serve(create_app: Callable[[Settings], FastAPI], settings: Settings, *, host: str, port: int, share: bool = False) -> int:
    """Run the app with uvicorn until interrupted; with `share`, also open a Gradio share link
    to it (the whole app: UI, Gradio API and REST). Returns the process exit status: 1 with a
    one-line message on stderr when the share link cannot be created."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=settings.log_level.lower(), log_config=None, access_log=False))
    if not share:
        _run(server)
        return 0

    failure: list[str] = []

    def share_when_started() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.05)
        try:
            url = open_share_link(host, port)
        except RuntimeError as error:
            failure.append(str(error))
            server.should_exit = True
            return
        print(f"* Running on public URL: {url}", flush=True)

    threading.Thread(target=share_when_started, name="deepshield-share-watch", daemon=True).start()
    _run(server)
    if failure:
        print(
            f"error: could not create a Gradio share link: {failure[0]}. It needs internet access to api.gradio.app "
            "and the share servers; run without --share / GRADIO_SHARE to serve locally.",
            file=sys.stderr,
        )
        return 1
    return 0
