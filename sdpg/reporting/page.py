"""index.md -> index.html: the same content rendered by a Markdown library (markdown-it-py, CommonMark
with GitHub tables), inline HTML such as ``<u>`` kept, one small stylesheet, no scripts, no network."""

from __future__ import annotations

import html
import re
import struct
from pathlib import Path

# Figures are saved at 200 dpi; shown at 120 CSS px per figure inch, so a panel has the same size in every
# figure of a page whatever the number of panels (at most the page width).
FIGURE_DPI = 200
CSS_PX_PER_INCH = 120

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #fff; max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.4em; border-bottom: 1px solid #d0d7de; padding-bottom: 0.3em; }
h2 { font-size: 1.3em; margin: 1.8em 0 0.6em; border-bottom: 1px solid #d8dee4; padding-bottom: 0.2em; }
h3 { font-size: 1.1em; margin: 1.4em 0 0.5em; }
p { margin: 0.5em 0 0.8em; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f6f8fa;
       padding: 0.1em 0.3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border-radius: 6px; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; display: block; overflow-x: auto; max-width: 100%;
        font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; font-weight: 600; }
tr:nth-child(even) td { background: #fafbfc; }
img { display: block; max-width: 100%; height: auto; margin: 0.6em 0; border: 1px solid #eaeef2; }
blockquote { margin: 0.6em 0; padding: 0.4em 1em; color: #57606a; border-left: 4px solid #d0d7de; background: #f8f9fa; }
.note { color: #57606a; }
footer { margin-top: 3em; color: #6e7781; font-size: 0.85em; }
"""


def markdown_to_html(text: str) -> str:
    """Body HTML of Markdown ``text``: CommonMark plus tables and strikethrough, raw inline HTML kept."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        raise RuntimeError("the report page needs markdown-it-py: pip install 'sdpg[report]'") from None

    md = MarkdownIt("commonmark", {"html": True, "typographer": False}).enable(["table", "strikethrough"])
    return md.render(text)


def _png_size(path: Path) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


def _size_images(body: str, base_dir: Path) -> str:
    """Give each local PNG its display width (see FIGURE_DPI) so small figures are not blown up."""

    def fix(m):
        tag, src = m.group(0), html.unescape(m.group(1))
        size = _png_size(base_dir / src) if "://" not in src else None
        if size is None or " width=" in tag:
            return tag
        w = round(size[0] * CSS_PX_PER_INCH / FIGURE_DPI)
        return tag.replace("<img ", f'<img width="{w}" ', 1)

    return re.sub(r'<img src="([^"]+)"[^>]*>', fix, body)


def render_page(markdown_text: str, title: str | None = None, base_dir: str | Path | None = None) -> str:
    """A standalone HTML page of ``markdown_text`` (title: its first ``# `` heading unless given).
    ``base_dir``: the folder the page will live in, to size its figures."""
    if title is None:
        m = re.search(r"^# (.+)$", markdown_text, re.M)
        title = m.group(1).strip() if m else "sdpg report"
    body = markdown_to_html(markdown_text)
    if base_dir is not None:
        body = _size_images(body, Path(base_dir))
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}"
        "<footer>Rendered by sdpg-report from index.md.</footer>\n</body>\n</html>\n"
    )
