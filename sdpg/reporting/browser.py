"""Open a report page in the system's headless Chromium: what a person would see, checked by a program.

``inspect_page`` loads the page with a small probe script appended (in a temporary copy beside the page, so
relative links resolve exactly as they do for the page) and returns what the browser rendered: tables with
their rows and cells, images with their decoded size, links, the document height. ``screenshot`` saves a
PNG of the whole page. Both need a Chromium binary (Debian: ``apt-get install chromium``); ``find_chromium``
says whether there is one. Each call uses its own throw-away profile, so several can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from sdpg import fsio

_PROBE = """
<script>
window.addEventListener("load", () => {
  const out = {
    tables: [...document.querySelectorAll("table")].map(t => ({
      rows: t.rows.length,
      cells: [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim())),
      header: [...t.querySelectorAll("thead th")].map(c => c.innerText.trim()),
    })),
    images: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete,
                                           naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
                                           width: i.getBoundingClientRect().width})),
    links: [...document.querySelectorAll("a[href]")].map(a => ({href: a.getAttribute("href"), text: a.innerText.trim()})),
    pre: document.querySelectorAll("pre").length,
    underlined: [...document.querySelectorAll("u")].map(u => u.innerText.trim()),
    bold: [...document.querySelectorAll("strong")].map(u => u.innerText.trim()),
    headings: [...document.querySelectorAll("h1, h2, h3")].map(h => h.innerText.trim()),
    text: document.body.innerText,
    height: Math.ceil(document.documentElement.scrollHeight),
  };
  const pre = document.createElement("pre");
  pre.id = "sdpg-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="sdpg-chromium-") as profile:
        cmd = [
            exe,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--allow-file-access-from-files",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--no-sandbox")  # Chromium refuses to start as root otherwise
        return subprocess.run(
            cmd + args, capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, "HOME": profile}
        )


def inspect_page(page: str | Path, timeout: float = 120) -> dict:
    """What headless Chromium rendered for ``page`` after its load event (see the module docstring)."""
    page = Path(page).resolve()
    html = page.read_text()
    probe = html.replace("</body>", _PROBE + "</body>") if "</body>" in html else html + _PROBE
    fd, tmp = tempfile.mkstemp(prefix=".sdpg-probe-", suffix=".html", dir=page.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(probe)
        r = _run(
            ["--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw", "--dump-dom", Path(tmp).as_uri()], timeout
        )
    finally:
        os.unlink(tmp)
    m = re.search(r'<pre id="sdpg-probe">(.*?)</pre>', r.stdout, re.S)
    if m is None:
        raise RuntimeError(f"Chromium did not run the page's load event (exit {r.returncode}): {r.stderr[-2000:]}")
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int | None = None, timeout: float = 120) -> Path:
    """PNG of the whole page (``height`` default: the rendered document height, at most 16,000 px)."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if height is None:
        height = min(16000, max(600, int(inspect_page(page, timeout)["height"]) + 20))
    fsio.check_writable_target(png)
    fsio.ensure_dir(png.parent)
    r = _run(
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            "--run-all-compositor-stages-before-draw",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        timeout,
    )
    if not png.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}")
    return png
