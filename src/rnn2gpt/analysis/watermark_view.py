"""The per-token view of a watermark detection: green and red tokens of a text, as HTML.

Green: the token is on the green list its context and the key pick; red: it is not; grey: not
counted (the prompt, a first token without a full context, or a repeat of a (context, token) pair
already counted).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from ..generation.watermark import Detection

GREEN, RED, GREY = "#b7e4b0", "#f4b6b6", "#e8e8e8"


def watermark_html(pieces: Sequence[str], detection: Detection, prompt: str = "") -> str:
    """A self-contained HTML page: the verdict, then the text with each token coloured.

    ``pieces``: the text each scored-or-not token of the judged text adds (prompt excluded), as
    :func:`rnn2gpt.analysis.common.token_pieces` gives them.
    """
    spans = []
    if prompt:
        spans.append(f'<span class="prompt" title="the prompt, not counted">{_show(prompt)}</span>')
    for piece, green, counted in zip(pieces, detection.is_green, detection.scored, strict=True):
        background = (GREEN if green else RED) if counted else GREY
        tip = ("green" if green else "red") if counted else "not counted"
        spans.append(f'<span style="background:{background}" title="{tip}">{_show(piece)}</span>')
    verdict = "watermarked" if detection.watermarked else "not watermarked"
    summary = (
        f"{detection.green} green of {detection.tokens} scored tokens "
        f"(expected {detection.gamma:g} of them without a watermark); z = {detection.z_score:.2f}, "
        f"p = {detection.p_value:.3g}: <b>{verdict}</b> at z &ge; {detection.threshold:g}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>rnn2gpt detect</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
        ".text{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.9;"
        "border:1px solid #ddd;padding:0.8rem}.prompt{color:#777}"
        "</style></head><body>\n"
        f"<h1>Watermark detection</h1>\n<p>{summary}</p>\n"
        f'<p><span style="background:{GREEN}">green</span> '
        f'<span style="background:{RED}">red</span> '
        f'<span style="background:{GREY}">not counted</span></p>\n'
        f'<div class="text">{"".join(spans)}</div>\n</body></html>\n'
    )


def _show(text: str) -> str:
    return html.escape(text).replace("\n", "↵\n")


__all__ = ["watermark_html"]
