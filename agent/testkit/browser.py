"""A real headless Chromium for tests of the technician's page, driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``): Debian's own browser, nothing downloaded,
no WebDriver, no port opened.

The browser resolves no name but loopback's and its background services are off, so a test
page can reach nothing but the agent under test. It runs in a session of its own and is
stopped by its PID (and its process group, for the renderers it started).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

#: Debian's packages, the smallest first: chromium-headless-shell, then chromium.
BINARIES = ("chromium-headless-shell", "chromium", "chromium-browser")
CALL_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    """The browser could not be started, or said a call failed."""


def find_chromium() -> str | None:
    """The headless Chromium on PATH, if any."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium while entered; ``page()`` opens a tab."""

    def __init__(self, profile: Path, binary: str | None = None) -> None:
        self.profile = profile
        self.binary = binary or find_chromium()
        self.log = profile / "chromium.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._to_browser: int | None = None
        self._replies: dict[int, dict[str, Any]] = {}
        #: Each tab's uncaught exceptions and console errors, by its session.
        self._errors: dict[str, list[str]] = {}
        self._arrived = threading.Condition()
        self._next_id = 0
        self._reader: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> Browser:
        if self.binary is None:
            raise BrowserError(f"no headless Chromium: apt install {BINARIES[0]}")
        self.profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        args = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # Names resolve to nothing: the page can reach loopback addresses only.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, "
            "EXCLUDE [::1]",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        # The protocol's pipe is fd 3 (what the browser reads) and fd 4 (what it writes);
        # bash, not sh: dash takes no fd above 9 in a redirection.
        shell = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", shell, self.binary, *args],
                pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._to_browser = to_browser_w
        self._reader = threading.Thread(
            target=self._read, args=(from_browser_r,), name="chromium", daemon=True
        )
        self._reader.start()
        try:
            self.call("Browser.getVersion")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close", timeout=5)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # a renderer left behind
        if self._to_browser is not None:
            with contextlib.suppress(OSError):
                os.close(self._to_browser)
            self._to_browser = None
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._process = None

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    data = json.loads(message)
                    if "id" in data:
                        with self._arrived:
                            self._replies[data["id"]] = data
                            self._arrived.notify_all()
                    elif (error := _page_error(data)) is not None:
                        with self._arrived:
                            self._errors.setdefault(data.get("sessionId", ""), []).append(error)
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one protocol command and wait for its result."""
        if self._to_browser is None:
            raise BrowserError("the browser is not running")
        with self._arrived:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._arrived:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "the browser exited" if self._closed else f"no answer in {timeout:g}s"
                    raise BrowserError(f"{method}: {why} (see {self.log})")
                self._arrived.wait(left)
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def errors(self, session: str) -> list[str]:
        """The uncaught exceptions and console errors of the tab of ``session`` so far."""
        with self._arrived:
            return list(self._errors.get(session, []))

    def page(
        self,
        width: int = 1280,
        height: int = 900,
        mobile: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Page:
        """A new tab ``width`` by ``height`` CSS pixels, sending ``headers`` with every
        request (an Authorization header, say)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session)
        page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        page.call("Network.enable")
        page.call("Runtime.enable")  # its exceptions and console errors: see Page.errors
        if headers:
            page.call("Network.setExtraHTTPHeaders", {"headers": headers})
        return page


def _page_error(event: dict[str, Any]) -> str | None:
    """What went wrong in a tab, from a protocol event: an uncaught exception or a console
    error; None for any other event."""
    params = event.get("params", {})
    if event.get("method") == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return str(details.get("exception", {}).get("description") or details.get("text"))
    if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
    return None


class Page:
    """One tab."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict[str, Any]:
        return self.browser.call(method, params, self.session, timeout)

    def errors(self) -> list[str]:
        """The tab's uncaught exceptions and console errors so far."""
        return self.browser.errors(self.session)

    def open(self, url: str) -> None:
        """Go to ``url`` and wait until its document has loaded: ``Page.navigate`` answers
        when loading begins, and a page asked about before then is still the old one (or has
        no body yet)."""
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        target = json.dumps(url)
        self.wait_for(
            f"location.href === new URL({target}).href && document.readyState === 'complete'"
        )

    def evaluate(self, expression: str, timeout: float = CALL_TIMEOUT) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """The first truthy value of ``expression`` (True for an element), which the page
        itself checks every 20 ms (one round trip, not one per check); BrowserError after
        ``timeout``."""
        script = f"""new Promise((resolve) => {{
            const deadline = performance.now() + {timeout * 1000};
            const check = () => {{
                let value = null;
                try {{ value = ({expression}); }} catch (e) {{ value = null; }}
                if (value) resolve(value instanceof Node ? true : value);
                else if (performance.now() > deadline) resolve(null);
                else setTimeout(check, 20);
            }};
            check();
        }})"""
        value = self.evaluate(script, timeout + CALL_TIMEOUT)
        if not value:
            text = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
            raise BrowserError(f"not within {timeout:g}s: {expression}\npage:\n{text}")
        return value

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG at ``path``."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
