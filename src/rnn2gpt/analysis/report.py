"""Reports as Markdown and as one self-contained HTML file, from the same list of blocks.

A :class:`Report` is a title and a list of blocks (headings, paragraphs, tables, images, code,
raw HTML). :meth:`Report.write` renders it twice: ``STEM.md`` links the images by their path
relative to the report (they sit next to it), and ``STEM.html`` embeds them as base64 ``data:``
URIs, with its CSS inline, so the HTML file alone can be mailed or archived and still shows
everything.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 70rem; padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.7rem; overflow-x: auto;
      white-space: pre-wrap; }
figure { margin: 1rem 0; } figcaption { color: #555; font-size: 0.9rem; }
img { max-width: 100%; height: auto; }
""".strip()


@dataclass(frozen=True)
class _Block:
    kind: str  # heading | paragraph | table | image | code | html
    data: dict[str, Any]


@dataclass
class Report:
    """A document built block by block, then written as Markdown and HTML.

    Text given to :meth:`heading`, :meth:`paragraph`, :meth:`table` and :meth:`code` is plain
    text (escaped for HTML); :meth:`html` adds markup as is, with a Markdown stand-in.
    """

    title: str
    blocks: list[_Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append(_Block("heading", {"text": text, "level": max(2, min(level, 6))}))
        return self

    def paragraph(self, text: str) -> Report:
        self.blocks.append(_Block("paragraph", {"text": text}))
        return self

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: bool = True
    ) -> Report:
        """Cells are shown with ``str``; with ``numeric`` those that look like numbers are
        right-aligned in HTML."""
        cells = [[_cell(c) for c in row] for row in rows]
        self.blocks.append(
            _Block("table", {"headers": list(headers), "rows": cells, "numeric": numeric})
        )
        return self

    def image(self, path: str | os.PathLike[str] | None, caption: str = "") -> Report:
        """A PNG file; None (a plot that could not be drawn) is skipped."""
        if path is not None:
            self.blocks.append(_Block("image", {"path": Path(path), "caption": caption}))
        return self

    def code(self, text: str) -> Report:
        self.blocks.append(_Block("code", {"text": text}))
        return self

    def html(self, markup: str, markdown: str = "") -> Report:
        """Raw HTML for the HTML report; ``markdown`` is what the Markdown report shows."""
        self.blocks.append(_Block("html", {"markup": markup, "markdown": markdown}))
        return self

    # ------------------------------------------------------------------ rendering

    def to_markdown(self, base_dir: str | os.PathLike[str] | None = None) -> str:
        """Markdown; image links are relative to ``base_dir`` (where the .md file will be)."""
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                out += ["#" * d["level"] + " " + d["text"], ""]
            elif block.kind == "paragraph":
                out += [d["text"], ""]
            elif block.kind == "table":
                out += _markdown_table(d["headers"], d["rows"]) + [""]
            elif block.kind == "image":
                link = _relative(d["path"], base_dir)
                out += [f"![{d['caption'] or d['path'].stem}]({link})", ""]
                if d["caption"]:
                    out += [f"*{d['caption']}*", ""]
            elif block.kind == "code":
                fence = "````" if "```" in d["text"] else "```"
                out += [fence + "text", d["text"], fence, ""]
            elif block.kind == "html" and d["markdown"]:
                out += [d["markdown"], ""]
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        """One self-contained HTML page: inline CSS, images embedded as base64 PNG."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                level = d["level"]
                body.append(f"<h{level}>{html.escape(d['text'])}</h{level}>")
            elif block.kind == "paragraph":
                body.append(f"<p>{html.escape(d['text'])}</p>")
            elif block.kind == "table":
                body.append(_html_table(d["headers"], d["rows"], d["numeric"]))
            elif block.kind == "image":
                data = base64.b64encode(d["path"].read_bytes()).decode("ascii")
                alt = html.escape(d["caption"] or d["path"].stem, quote=True)
                caption = (
                    f"<figcaption>{html.escape(d['caption'])}</figcaption>" if d["caption"] else ""
                )
                body.append(
                    f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                    f"{caption}</figure>"
                )
            elif block.kind == "code":
                body.append(f"<pre>{html.escape(d['text'])}</pre>")
            elif block.kind == "html":
                body.append(d["markup"])
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
        )

    def write(self, out_dir: str | os.PathLike[str], stem: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/STEM.md`` and ``out_dir/STEM.html``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md_path, html_path = out / f"{stem}.md", out / f"{stem}.html"
        md_path.write_text(self.to_markdown(out), encoding="utf-8")
        html_path.write_text(self.to_html(), encoding="utf-8")
        return md_path, html_path


# --------------------------------------------------------------------------- helpers


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return str(value)


def _relative(path: Path, base_dir: str | os.PathLike[str] | None) -> str:
    if base_dir is None:
        return path.as_posix()
    try:
        return Path(os.path.relpath(path, base_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        escaped = [c.replace("|", "\\|").replace("\n", " ") for c in cells]
        return "| " + " | ".join(escaped) + " |"

    return [line(headers), "| " + " | ".join("---" for _ in headers) + " |"] + [
        line(r) for r in rows
    ]


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: bool) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for cell in row:
            cls = ' class="num"' if numeric and _looks_numeric(cell) else ""
            cells.append(f"<td{cls}>{html.escape(cell)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _looks_numeric(text: str) -> bool:
    head = text.split(" ", 1)[0].replace(",", "")
    try:
        float(head)
    except ValueError:
        return False
    return True


__all__ = ["Report"]
