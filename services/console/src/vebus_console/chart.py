"""The status page's chart: events per minute by type over the last hour, as SVG.

Counted from VEBUS_EVENTS by subject alone (the class is the subject's last token), with a
headers-only consumer, so no body crosses the network; drawn on the server as stacked
bars (the most frequent TOP classes, the rest as "other"). No script, no chart library.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from markupsafe import Markup, escape
from nats.js import JetStreamContext

from vebus.bus.window import iter_window
from vebus.timespec import utcnow

__all__ = ["MinuteCounts", "count_minutes", "render_svg"]

MINUTES = 60
TOP = 6
#: colour-blind-safe (Okabe-Ito), then grey for "other"
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
W, H, LEFT, BOTTOM, TOPPAD = 720, 220, 44, 24, 10


@dataclass
class MinuteCounts:
    """Events per minute (0 = the oldest of the hour) and class."""

    end: dt.datetime
    per_minute: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in range(60)])
    total: int = 0


async def count_minutes(js: JetStreamContext, *, now: dt.datetime | None = None) -> MinuteCounts:
    """Count the last hour of VEBUS_EVENTS by minute and event class."""
    end = (now or utcnow()).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    start = end - dt.timedelta(minutes=MINUTES)
    out = MinuteCounts(end=end)
    async for msg in iter_window(js, start=start, end=end, batch=5000, headers_only=True):
        minute = int((msg.metadata.timestamp - start).total_seconds() // 60)
        if 0 <= minute < MINUTES:
            out.per_minute[minute][msg.subject.rsplit(".", 1)[-1]] += 1
            out.total += 1
    return out


def render_svg(counts: MinuteCounts) -> Markup:
    """The stacked bar chart, with axis labels and a legend."""
    totals: Counter[str] = Counter()
    for c in counts.per_minute:
        totals.update(c)
    top = [name for name, _ in totals.most_common(TOP)]
    colours = {name: PALETTE[i] for i, name in enumerate(top)}
    peak = max((sum(c.values()) for c in counts.per_minute), default=0) or 1
    plot_w, plot_h = W - LEFT - 10, H - BOTTOM - TOPPAD
    bar = plot_w / MINUTES
    height = H + 20 * ((len(top) + 2) // 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" role="img"'
        ' aria-label="events per minute by type, last hour" class="chart">',
        f'<line x1="{LEFT}" y1="{TOPPAD + plot_h}" x2="{W - 10}" y2="{TOPPAD + plot_h}" '
        'stroke="#888"/>',
        f'<text x="{LEFT - 6}" y="{TOPPAD + 8}" text-anchor="end" font-size="11" '
        f'fill="#555">{peak}</text>',
        f'<text x="{LEFT - 6}" y="{TOPPAD + plot_h}" text-anchor="end" font-size="11" '
        'fill="#555">0</text>',
    ]
    for minute, c in enumerate(counts.per_minute):
        y = float(TOPPAD + plot_h)
        x = LEFT + minute * bar
        stacks = [(name, c[name]) for name in top if c[name]]
        other = sum(c.values()) - sum(n for _, n in stacks)
        if other:
            stacks.append(("other", other))
        for name, n in stacks:
            h = plot_h * n / peak
            y -= h
            colour = colours.get(name, PALETTE[-1])
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(name)}: {n}</title></rect>'
            )
    for minute in (0, 15, 30, 45, 59):
        label = (counts.end - dt.timedelta(minutes=MINUTES - minute)).strftime("%H:%M")
        parts.append(
            f'<text x="{LEFT + (minute + 0.5) * bar:.1f}" y="{H - 6}" text-anchor="middle" '
            f'font-size="11" fill="#555">{label}</text>'
        )
    legend = [*top, "other"] if len(totals) > len(top) else top
    for i, name in enumerate(legend):
        lx, ly = LEFT + (i % 2) * 330, H + 14 + 20 * (i // 2)
        colour = colours.get(name, PALETTE[-1])
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(
            f'<text x="{lx + 16}" y="{ly}" font-size="12" fill="#222">{escape(name[:40])} '
            f"({totals.get(name, sum(totals.values()) - sum(totals[t] for t in top))})</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
