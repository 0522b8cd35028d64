#!/usr/bin/env python3
"""Draws the table `bench/ab.sh` prints as an SVG bar chart: each system's requests per second
as a share of the static ceiling's, averaged over the rounds.

    bash bench/ab.sh /tmp/before /tmp/after | tee run.md
    python3 bench/ratio_chart.py run.md bench/results/hit-ratios.svg "title"

Only the standard library; the SVG has no scripts and no external references.
"""

import re
import sys
from collections import OrderedDict
from html import escape


def read_ratios(path):
    """`{system: [ratio, ...]}` in the order the table first names each system."""
    ratios = OrderedDict()
    for line in open(path, encoding="utf-8"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("round"):
            continue
        system = re.sub(r"^round \d+: ", "", cells[0])
        ratios.setdefault(system, []).append(float(cells[2]))
    return ratios


def chart(ratios, title):
    bar, gap, label_width, width = 22, 8, 330, 820
    top = 50
    height = top + len(ratios) * (bar + gap) + 40
    scale = (width - label_width - 70) / 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for mark in (0.25, 0.5, 0.75, 0.85, 1.0):
        x = label_width + mark * scale
        dash = ' stroke-dasharray="4 3"' if mark == 0.85 else ""
        out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 30}" '
                   f'stroke="#bbb"{dash}/>')
        out.append(f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle">{mark:.2f}×</text>')
    for i, (system, values) in enumerate(ratios.items()):
        mean = sum(values) / len(values)
        y = top + i * (bar + gap)
        colour = ("#888" if "ceiling" in system else "#d98c3f" if "tower-http-cache" in system
                  else "#3f7fd9")
        out.append(f'<text x="{label_width - 8}" y="{y + bar * 0.7:.1f}" '
                   f'text-anchor="end">{escape(system)}</text>')
        out.append(f'<rect x="{label_width}" y="{y}" width="{mean * scale:.1f}" height="{bar}" '
                   f'fill="{colour}"/>')
        out.append(f'<text x="{label_width + mean * scale + 6:.1f}" y="{y + bar * 0.7:.1f}">'
                   f'{mean:.2f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: ratio_chart.py TABLE.md OUT.svg TITLE")
    table, svg, title = sys.argv[1:]
    ratios = read_ratios(table)
    if not ratios:
        sys.exit(f"{table}: no rows of bench/ab.sh's table")
    with open(svg, "w", encoding="utf-8") as out:
        out.write(chart(ratios, title))


if __name__ == "__main__":
    main()
