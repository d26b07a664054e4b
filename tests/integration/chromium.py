"""Headless Chromium driven over the DevTools protocol (aiohttp websockets, nothing else).

No Selenium or Playwright (their browser downloads are out of reach here): Debian's
``chromium`` is started with ``--remote-debugging-port=0``, the port is read from the
``DevToolsActivePort`` file it writes in its profile, and the page is driven with a few
protocol commands: navigate, evaluate an expression until it is true, evaluate, screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""The browser, or None where it is not installed (the tests that need it are skipped)."""
START_TIMEOUT_S = 30.0


class BrowserError(Exception):
    """The browser did not start, or a protocol command failed."""


class Page:
    """One headless Chromium with one page; use ``async with Page(profile_dir) as page``."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1000) -> None:
        self.profile_dir = profile_dir
        self.width = width
        self.height = height
        self.exceptions: list[str] = []
        """Uncaught exceptions and console errors the page reported."""
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Page:
        assert CHROMIUM is not None, "Chromium is not installed"
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # root in a container: the sandbox cannot start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile_dir}",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._session = aiohttp.ClientSession()
        port = await self._devtools_port()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def _devtools_port(self) -> int:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.returncode is not None:
                raise BrowserError(f"chromium exited at start with {self._process.returncode}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium wrote no {marker} within {START_TIMEOUT_S:g} s")

    async def _read(self) -> None:
        assert self._socket is not None
        async for message in self._socket:
            data = json.loads(message.data)
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(json.dumps(details.get("exception", details))[:500])
            elif (
                data.get("method") == "Runtime.consoleAPICalled"
                and data["params"].get("type") == "error"
            ):
                self.exceptions.append(json.dumps(data["params"].get("args"))[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one protocol command; its result (raises BrowserError on an error)."""
        assert self._socket is not None
        command_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = waiter
        await self._socket.send_json({"id": command_id, "method": method, "params": params or {}})
        answer = await asyncio.wait_for(waiter, 30)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str, timeout_s: float, what: str) -> None:
        """Evaluate ``expression`` until it is true (every 100 ms, up to ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not await self.evaluate(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page did not reach {what} within {timeout_s:g} s")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """A PNG of the whole page (the width of the window, the height of the page)."""
        height = await self.evaluate("document.documentElement.scrollHeight")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
        )
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(shot["data"])
