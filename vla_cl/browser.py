"""Open a local HTML page in headless Chromium and report whether its images and videos really load.

`vla-cl razor` writes `report.html` with plots and WebM clips referenced by relative paths; a broken path,
a codec the browser cannot play, or a script error only shows when a browser renders the page. `check_page`
opens the file in Debian's headless Chromium through Selenium, waits until every `<video>` can show a frame
(or the timeout passes) and returns a `PageCheck` listing what loaded and what did not.

Needs PyPI `selenium` (the `test` extra) and Debian's `chromium` and `chromium-driver`, which `make setup`
installs. Selenium is imported only when a page is checked.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "`make setup` installs Debian's chromium and chromium-driver; "
    "or run `apt-get install chromium chromium-driver`."
)
# HTMLMediaElement.readyState: HAVE_CURRENT_DATA, the first state in which a frame can be shown.
HAVE_CURRENT_DATA = 2
MEDIA_ERRORS = {
    1: "MEDIA_ERR_ABORTED",
    2: "MEDIA_ERR_NETWORK",
    3: "MEDIA_ERR_DECODE",
    4: "MEDIA_ERR_SRC_NOT_SUPPORTED",
}
POLL_S = 0.1
# The background-networking flags stop Chromium's own calls home, which a closed network refuses and
# which would otherwise be the only traffic a file:// page makes.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
)
# The page's own attribute (the relative path as written) reads better in a message than the file:// URL.
MEDIA_STATE_JS = """
const src = el => el.getAttribute('src') || el.currentSrc || '';
return {
  images: Array.from(document.images).map(i => [src(i), i.naturalWidth, i.complete]),
  videos: Array.from(document.querySelectorAll('video')).map(
    v => [src(v), v.readyState, v.error ? v.error.code : null]),
};
"""


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed; the message names which and how to install it."""


@dataclass(frozen=True)
class PageCheck:
    """What a headless browser saw on one page."""

    images: list[tuple[str, int]]
    """(src, naturalWidth) per <img>; naturalWidth 0 means the image did not load."""
    videos: list[tuple[str, int, int | None]]
    """(src, readyState, MediaError code or None) per <video>."""
    console_errors: list[str]
    """Messages the page logged to the browser console at level SEVERE."""
    broken: list[str]
    """One human-readable line per problem found above."""

    @property
    def ok(self) -> bool:
        return not self.broken


def find_browser() -> tuple[str, str]:
    """Return (chromium binary, chromedriver), or raise BrowserMissing naming what is missing."""
    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver)) if not found]
    if missing:
        names = " and ".join(missing)
        raise BrowserMissing(f"{names} not found (looked in /usr/bin and on PATH). {INSTALL_HINT}")
    return chromium, driver


def check_page(path: str | Path, timeout: float = 60) -> PageCheck:
    """Render a local HTML file headless; wait up to `timeout` seconds for its videos; report what loaded."""
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no HTML page at {page}")
    chromium, driver_path = find_browser()
    try:
        from selenium import webdriver
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissing(f"the selenium package is missing ({exc}); `make setup` installs it.") from exc

    deadline = time.monotonic() + timeout
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vla-cl-chromium-", ignore_cleanup_errors=True) as profile:
        options = webdriver.ChromeOptions()
        # A named driver keeps Selenium Manager (which would look for one on the network) out of it, and a
        # named binary makes sure it drives the Chromium found above.
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.set_page_load_timeout(max(timeout, 1))
            try:
                driver.get(page.as_uri())
            except TimeoutException:
                problems.append(f"the page did not finish loading within {timeout:g} s")
            while True:
                state = driver.execute_script(MEDIA_STATE_JS)
                settled = all(complete for _, _, complete in state["images"]) and all(
                    ready >= HAVE_CURRENT_DATA or error is not None for _, ready, error in state["videos"]
                )
                if settled or time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
            log = driver.get_log("browser")
        finally:
            driver.quit()

    images = [(src, int(width)) for src, width, _ in state["images"]]
    videos = [
        (src, int(ready), None if error is None else int(error)) for src, ready, error in state["videos"]
    ]
    # A file:// page makes no favicon request, so no favicon filter is needed here; every SEVERE entry
    # (a missing file, a script error) is about the page itself.
    console_errors = [entry["message"] for entry in log if entry.get("level") == "SEVERE"]
    for src, width in images:
        if width == 0:
            problems.append(f"image {src} did not load (naturalWidth 0)")
    for src, ready, error in videos:
        if error is not None:
            problems.append(f"video {src} failed: {MEDIA_ERRORS.get(error, 'MediaError')} (code {error})")
        elif ready < HAVE_CURRENT_DATA:
            problems.append(f"video {src} has no frame to show after {timeout:g} s (readyState {ready} < 2)")
    problems.extend(f"console error: {message}" for message in console_errors)
    return PageCheck(images=images, videos=videos, console_errors=console_errors, broken=problems)
