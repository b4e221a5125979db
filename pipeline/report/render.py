"""A report as a list of `Section`s (title, text, table, figures, note), rendered to a
self-contained HTML page (CSS inlined, figures as base64 PNGs) or to Markdown (figures linked
from a folder).

The pipeline's report (`pipeline.report.sections`) and the study's (`pipeline.study.render`)
both render through here. Numeric cells align right; a signed delta (`sections._delta`, with a
typographic minus) is coloured green when negative (lower BPB is better), red when positive.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.report.data import NA, NOT_REACHED


@dataclass
class Section:
    title: str
    text: str = ""
    headers: list[str] | None = None
    rows: list[list[str]] | None = None
    images: list[tuple[str, bytes | None]] = field(default_factory=list)  # (name, png)
    note: str = ""  # one or two sentences under the table/figures: what they show


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;
 color:#1d2733;background:#f6f7f9;margin:0}
main{max-width:1080px;margin:0 auto;padding:28px 32px 60px}
header{border-bottom:3px solid #1f4e79;margin-bottom:18px;padding-bottom:8px}
h1{font-size:26px;margin:0 0 4px} .meta{color:#5f6b7a;font-size:13px}
section{background:#fff;border:1px solid #e2e6eb;border-radius:8px;padding:16px 20px;margin:16px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.03)}
h2{font-size:18px;margin:0 0 10px;color:#1f4e79}
p{line-height:1.5;font-size:14px;margin:6px 0 10px}
code{background:#eef1f5;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px;width:auto;margin:4px 0 8px}
th,td{padding:5px 10px;border-bottom:1px solid #e6e9ee;text-align:right;white-space:nowrap}
th{background:#f0f3f7;font-weight:600} td:first-child,th:first-child{text-align:left}
tr:hover td{background:#f8fafc} .na{color:#9aa4b1;font-style:italic}
.good{color:#1e8449;font-weight:600} .bad{color:#b03a2e;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:12px} .figs img{max-width:100%;width:500px;border:1px solid #eef0f3;
 border-radius:4px}
.scroll{overflow-x:auto} td.txt{text-align:left;white-space:normal} .note{color:#3d4856;font-size:13px;margin-top:4px}
"""


_NUMERIC = re.compile(r"[+\-\u2212]?[\d,.]+(e[+-]?\d+)?%?( \(.*\))?|–")


def _is_numeric(cell: str) -> bool:
    """Numbers (and NA / dashes) align right; text such as samples and messages aligns left."""
    return cell in (NA, NOT_REACHED) or bool(_NUMERIC.fullmatch(cell))


def _html_cell(s: str, tag: str = "td") -> str:
    cls = ' class="na"' if s in (NA, NOT_REACHED) else ""
    if not cls and tag == "td" and not _is_numeric(s):
        cls = ' class="txt"'
    if re.fullmatch(r"[+\u2212]\d+\.\d+", s):  # a delta (see sections._delta): lower BPB is better
        cls = ' class="good"' if s.startswith("\u2212") else ' class="bad"'
    return f"<{tag}{cls}>{html.escape(s)}</{tag}>"


def _html_text(text: str) -> str:
    esc = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc)


def render_html(sections: Sequence[Section], title: str, meta: str) -> str:
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<header><h1>{html.escape(title)}</h1><div class='meta'>{html.escape(meta)}</div></header>",
    ]
    for sec in sections:
        parts.append(f"<section><h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            cls = " class='na'" if sec.text.endswith(f"{NA}.") else ""
            parts.append(f"<p{cls}>{_html_text(sec.text)}</p>")
        if sec.headers and sec.rows:
            parts.append("<div class='scroll'><table><thead><tr>")
            parts += [_html_cell(h, "th") for h in sec.headers]
            parts.append("</tr></thead><tbody>")
            for row in sec.rows:
                parts.append("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>")
            parts.append("</tbody></table></div>")
        figs = []
        for name, png in sec.images:
            if png is None:
                figs.append(f"<p class='na'>{html.escape(name.replace('_', ' '))}: {NA}.</p>")
            else:
                b64 = base64.b64encode(png).decode("ascii")
                figs.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
        if figs:
            parts.append("<div class='figs'>" + "".join(figs) + "</div>")
        if sec.note:
            parts.append(f"<p class='note'>{_html_text(sec.note)}</p>")
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def render_markdown(sections: Sequence[Section], title: str, meta: str, fig_dir: str) -> str:
    lines = [f"# {title}", "", f"_{meta}_", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        if sec.text:
            lines += [sec.text, ""]
        if sec.headers and sec.rows:
            lines.append("| " + " | ".join(sec.headers) + " |")
            text_col = [
                i == 0 or not all(_is_numeric(row[i]) for row in sec.rows if i < len(row))
                for i in range(len(sec.headers))
            ]
            lines.append("|" + "|".join("---" if t else "---:" for t in text_col) + "|")
            lines += [
                "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in sec.rows
            ]
            lines.append("")
        for name, png in sec.images:
            if png is None:
                lines += [f"{name.replace('_', ' ')}: {NA}.", ""]
            else:
                lines += [f"![{name}]({fig_dir}/{name}.png)", ""]
        if sec.note:
            lines += [f"_{sec.note}_", ""]
    return "\n".join(lines)
