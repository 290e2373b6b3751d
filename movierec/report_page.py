"""The report's page: sections, HTML tables, the stylesheet and figures drawn without pyplot."""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from typing import Any


from movierec.core.artifacts import Bundle

_DPI = 100
_MAX_WIDTH = 11.0  # inches; at _DPI this fits the page column unscaled, so text keeps its size

# Okabe-Ito-like qualitative palette from tab10; grey is reserved for "other"/"no genre"
_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_GREY = "#9a9a9a"


# ---- page -------------------------------------------------------------------------------------------


@dataclass
class _Section:
    """One ``<section>``: an id (tests and the table of contents use it), a title and HTML body."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)

    def p(self, text: str, cls: str = "") -> None:
        self.body.append(f'<p class="{cls}">{text}</p>' if cls else f"<p>{text}</p>")

    def note(self, text: str) -> None:
        """A visible remark on something missing, so a degraded report says why."""
        self.p(text, "note")

    def figure(self, png: bytes, alt: str, caption: str = "") -> None:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        self.body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>')

    def html(self) -> str:
        return f'<section id="{self.key}"><h2>{_esc(self.title)}</h2>\n' + "\n".join(self.body) + "</section>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:40px;border-bottom:2px solid #e4e4e4;padding-bottom:4px}
h3{margin:24px 0 8px;font-size:17px}
.sub{color:#666;margin:0 0 12px} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
nav a{margin-right:14px} figure{margin:12px 0} img{max-width:100%;height:auto}
figcaption{color:#555;font-size:14px;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border-bottom:1px solid #e4e4e4;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.best{font-weight:600} .why{color:#555;font-size:13px} .swatch{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
"""


def _page(bundle: Bundle, sections: list[_Section]) -> str:
    ds = bundle.manifest.get("dataset", {})
    nav = " ".join(f'<a href="#{s.key}">{_esc(s.title)}</a>' for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>movierec report: {_esc(ds.get('name', bundle.path.name))}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>movierec report</h1><p class=\"sub\">model {_esc(bundle.model_version)} · "
        f"data set {_esc(ds.get('name', '?'))} · bundle created {_esc(bundle.manifest.get('created', '?'))} · "
        f"report written {_esc(time.strftime('%Y-%m-%d %H:%M'))}</p><nav>{nav}</nav>\n"
        + "\n".join(s.html() for s in sections)
        + "</main></body></html>\n"
    )


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str] | None, rows: list[list[Any]], numeric: set[int] | None = None, bold: set[tuple[int, int]] | None = None) -> str:
    numeric, bold = numeric or set(), bold or set()

    def cell(tag: str, i: int, j: int, v: Any) -> str:
        cls = " ".join(c for c, on in (("num", j in numeric), ("best", (i, j) in bold)) if on)
        return f'<{tag} class="{cls}">{v}</{tag}>' if cls else f"<{tag}>{v}</{tag}>"

    body = "".join("<tr>" + "".join(cell("td", i, j, v) for j, v in enumerate(r)) + "</tr>" for i, r in enumerate(rows))
    if header is None:  # a key/value table
        return f"<table><tbody>{body}</tbody></table>"
    head = "".join(cell("th", -1, j, _esc(h)) for j, h in enumerate(header))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- figures ------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A fresh Agg-backed figure (no pyplot: no global state, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig


def _png(fig: Any) -> bytes:
    """PNG bytes without the software/date metadata, so the same bundle gives the same image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, alpha=0.25, linewidth=0.6)
    ax.set_axisbelow(True)
