"""Headless Chromium for page tests, over the DevTools protocol on a pipe (no extra packages).

``open_page(path)`` loads a local HTML file and returns what a person would see go wrong: console
errors (``console.error``/``console.assert``), uncaught exceptions, and browser log errors
(failed loads, Content-Security-Policy violations); it also evaluates DOM queries in the page and
saves a full-page screenshot.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages (JSON, each
ended by a NUL byte) from its file descriptor 3 and writes replies and events to descriptor 4.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PageResult", "chromium", "open_page"]

INSTALL_HINT = (
    "headless Chromium is needed for the report page tests and is not installed: run "
    "tools/setup.sh (it installs the Debian package `chromium`), or apt-get install chromium"
)


def chromium() -> str:
    """The Chromium executable; fails the test with an install hint when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(INSTALL_HINT)


@dataclasses.dataclass
class PageResult:
    """What loading a page produced: errors (one line each), evaluated values, the screenshot."""

    errors: list[str]
    values: dict[str, Any]
    screenshot: Path | None


class _DevTools:
    """A minimal DevTools protocol client over Chromium's pipe."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int, timeout: float):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def _read(self, wait: float | None = None) -> dict | None:
        """The next message; None if none arrives within ``wait`` seconds (None: the deadline)."""
        end = self.deadline if wait is None else min(self.deadline, time.monotonic() + wait)
        while b"\0" not in self._buffer:
            left = end - time.monotonic()
            if left <= 0:
                if wait is not None and time.monotonic() < self.deadline:
                    return None
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def drain(self, seconds: float) -> None:
        """Collects the events that arrive within ``seconds`` (late errors)."""
        while (event := self._read(wait=seconds)) is not None:
            self.events.append(event)


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(
                str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
            )
            errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            errors.append(f"uncaught: {exception.get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
    return errors


def _spawn(args: list[str]) -> tuple[subprocess.Popen, int, int]:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def as_fds_3_and_4() -> None:  # in the child, before exec
        # Move both ends above 4 first, so that neither dup2 below overwrites the other.
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    # close_fds=False: os.pipe() descriptors are close-on-exec, so only 3 and 4 are inherited.
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=False,
        preexec_fn=as_fds_3_and_4,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, to_child_w, from_child_r


def open_page(
    path: str | Path,
    *,
    evaluate: dict[str, str] | None = None,
    screenshot: str | Path | None = None,
    width: int = 1280,
    timeout: float = 60.0,
) -> PageResult:
    """Loads ``path`` in headless Chromium; returns its errors, the values of the ``evaluate``
    JavaScript expressions (by key), and saves a full-page PNG to ``screenshot``."""
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        args = [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "about:blank",
        ]
        proc, write_fd, read_fd = _spawn(args)
        try:
            tools = _DevTools(proc, write_fd, read_fd, timeout)
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Page.navigate", {"url": url}, session=session)
            tools.wait_for("Page.loadEventFired")
            values = {}
            for key, expression in (evaluate or {}).items():
                result = tools.send(
                    "Runtime.evaluate",
                    {"expression": expression, "returnByValue": True},
                    session=session,
                )
                if "exceptionDetails" in result:
                    raise AssertionError(f"evaluating {key!r} failed: {result['exceptionDetails']}")
                values[key] = result["result"].get("value")
            shot = None
            if screenshot is not None:
                size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
                data = tools.send(
                    "Page.captureScreenshot",
                    {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
                    session=session,
                )["data"]
                shot = Path(screenshot)
                shot.write_bytes(base64.b64decode(data))
            tools.drain(0.2)
            errors = _errors(tools.events)
            with contextlib.suppress(RuntimeError, TimeoutError, OSError):
                tools.send("Browser.close")  # the pipe may close before the reply
        finally:
            os.close(write_fd)
            os.close(read_fd)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return PageResult(errors, values, shot)
