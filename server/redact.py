"""Server file system paths taken out of messages that reach a client (REST, UI, Gradio API)."""

from __future__ import annotations

import re

# An absolute or home-relative path not glued to a word, URL scheme or variable ($DIR/x).
_PATH = re.compile(r"(?<![\w$:/.~-])(?:~|\.{1,2})?/(?:[^\s'\"`,;:()<>\[\]{}/]+/)*([^\s'\"`,;:()<>\[\]{}/]*)")


def scrub(text: str) -> str:
    """Replace server file system paths in a message with `.../<file name>`."""
    return _PATH.sub(lambda m: f".../{m.group(1)}" if m.group(1) else "...", text)
