"""The leaderboard as one self-contained static HTML page (`<out>/leaderboards/<benchmark>.html`), rendered from the
table model (`harness.records.leaderboard.Leaderboard`): inline CSS and JavaScript, no network. Columns sort on a
click (best first for a metric, A-Z for text; a second click reverses), OOD sets are grouped near / far under a
header row, each cell shows mean ± std with its per-seed values on hover, each label's Δ vs its baseline with the
95% paired interval (`harness.records.statistics`) where the spec names baselines, the papers' reported rows, and
the records' figures (score histograms, galleries) as thumbnails linked by relative path, not embedded: the page
stays small and shows them when opened inside its out directory. Every string from a record is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from urllib.parse import quote

import pandas as pd

from harness.records.leaderboard import BEST, COLUMN, LOWER_IS_BETTER, TIED, Cell, Leaderboard, interval_text

GROUP_TITLES = {"near": "near-OOD", "far": "far-OOD", "": "OOD sets without a group"}
ARROWS = {"FPR95": "FPR95 ↓", "AUROC": "AUROC ↑", "AUPR-In": "AUPR-In ↑", "AUPR-Out": "AUPR-Out ↑",
          "ID acc.": "ID acc. ↑"}

STYLE = """
body { font: 13px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 20px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 6px; } h2 { font-size: 16px; margin: 24px 0 6px; }
p.legend { max-width: 110em; color: #444; margin: 4px 0 8px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 4px 0 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; }
th { background: #f3f5f7; font-weight: 600; white-space: nowrap; }
th.group { background: #e6ebf1; }
th[data-col] { cursor: pointer; user-select: none; }
th[data-col]:hover { background: #dde5ee; }
th[aria-sort="ascending"]::after { content: " ▲"; } th[aria-sort="descending"]::after { content: " ▼"; }
td { text-align: right; white-space: nowrap; vertical-align: top; }
td.text { text-align: left; }
td .s { display: block; color: #6a737d; font-size: 11px; }
td.best .m { font-weight: 700; } td.tied .m { font-style: italic; }
tbody tr:nth-child(even) { background: #f8f9fb; }
table.reported td { color: #57606a; font-style: italic; }
sup { color: #9a6700; cursor: help; }
details { margin: 2px 0; } .gallery { display: flex; flex-wrap: wrap; gap: 8px; margin: 6px 0 10px; }
.gallery figure { margin: 0; font-size: 11px; color: #57606a; }
.gallery img { height: 150px; border: 1px solid #d0d7de; }
code { background: #f3f5f7; padding: 1px 3px; }
"""

# Click a header: sort its column (best first for a metric, ascending for text); again: reverse. Empty cells last.
SCRIPT = """
for (const table of document.querySelectorAll("table.board")) {
  const body = table.tBodies[0];
  for (const th of table.querySelectorAll("th[data-col]")) {
    th.addEventListener("click", () => {
      const col = Number(th.dataset.col);
      const numeric = th.dataset.better !== undefined;
      const first = th.dataset.better === "higher" ? -1 : 1;
      const dir = th.hasAttribute("aria-sort") ? -Number(table.dataset.dir) : first;
      const key = (row) => {
        const cell = row.cells[col];
        if (!numeric) return cell.dataset.value ?? cell.textContent.trim();
        return cell.dataset.value === undefined ? null : Number(cell.dataset.value);
      };
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        return dir * (numeric ? x - y : x.localeCompare(y));
      });
      body.append(...rows);
      for (const other of table.querySelectorAll("th[data-col]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      table.dataset.dir = String(dir);
    });
  }
}
"""


@dataclass(frozen=True)
class Column:
    """One body column: its header path (block, set, title; block and set '' for a column whose title spans the
    header rows), its sort direction (`better`: lower / higher; None sorts as text) and its cells' HTML."""

    block: str
    set: str
    title: str
    better: str | None
    cells: list[str]


def _seeds_title(cell: Cell) -> str:
    return "; ".join(f"seed {seed}: {value:.4f}" for seed, value in zip(cell.values.seeds, cell.values, strict=True))


def metric_td(cell: Cell) -> str:
    """A metric cell: the mean (bold when best beyond its interval, italic when tied with the best) over its std,
    per-seed values on hover."""
    if not cell.values:
        return "<td>–</td>"
    rank = {BEST: ' class="best"', TIED: ' class="tied"'}.get(cell.rank, "")
    spread = f'<span class="s">± {cell.spread}</span>' if cell.spread else ""
    return (f'<td{rank} data-value="{cell.mean!r}" title="{escape(_seeds_title(cell))}"><span class="m">'
            f"{escape(' '.join([f'{cell.mean:.2f}', *cell.marks]))}</span>{spread}</td>")


def text_td(text: str) -> str:
    return f'<td class="text">{escape(text)}</td>'


def method_td(label: str, provenance: str) -> str:
    note = (f' <sup title="averages records of different code versions or environments: {escape(provenance)}">'
            "mixed</sup>") if provenance else ""
    return f'<td class="text" data-value="{escape(label)}">{escape(label)}{note}</td>'


def delta_td(board: Leaderboard, label: str) -> str:
    delta = board.deltas.get(label)
    if delta is None:
        return "<td>–</td>"
    difference = delta.difference
    interval = interval_text(difference) or f"(n={difference.n})"
    return (f'<td data-value="{difference.mean!r}" title="paired over seeds '
            f'{escape(",".join(map(str, difference.units)))}"><span class="m">{difference.mean:+.2f}</span>'
            f'<span class="s">{interval} vs {escape(delta.baseline)}</span></td>')


def _metric_column(board: Leaderboard, part: pd.DataFrame, block: str, column: tuple[str, str]) -> Column:
    better = "lower" if LOWER_IS_BETTER[column[1]] else "higher"
    return Column(block, column[0], ARROWS[column[1]], better, [metric_td(c) for c in board.cells(part, column)])


def delta_legend(board: Leaderboard) -> str:
    return (f"Δ: each label's {board.headline_name} (pp) minus its baseline's (the spec's baselines, per method "
            "kind), paired by seed, with the 95% paired t-interval below it (docs/statistics.md); – for a baseline "
            "itself or a label without one.")


def columns(board: Leaderboard, part: pd.DataFrame) -> list[Column]:
    """The page's columns for the rows of one FPR convention: Method, seeds, (Recipe,) the sets block by block
    (near, far, ungrouped), the averages, ID accuracy and, where any label has one, Δ vs baseline."""
    labels = list(part[("", "Method")])
    found = [Column("", "", "Method", None, [method_td(label, text) for label, text in
                                              zip(labels, part[("", "provenance")], strict=True)]),
             Column("", "", "seeds", "higher", [f'<td data-value="{n}">{n}</td>' for n in part[("", "seeds")]])]
    if board.recipes_differ:
        found.append(Column("", "", "Recipe", None, [text_td(r or "–") for r in part[("", "recipe")]]))
    grouped = bool(set(board.groups.values()))
    for group in ("near", "far", ""):
        block = GROUP_TITLES[group] if grouped else "OOD sets"
        for name in (s for s in board.sets if board.groups.get(s, "") == group):
            found += [_metric_column(board, part, block, (name, COLUMN[m])) for m in board.metrics]
    for name in board.averages():
        found += [_metric_column(board, part, "averages", (name, COLUMN[m])) for m in board.metrics]
    found.append(_metric_column(board, part, "", ("", "ID acc.")))
    if board.deltas:
        found.append(Column("", "", f"Δ {board.headline_name} vs baseline", "higher",
                            [delta_td(board, label) for label in labels]))
    return found


def _spans(keys: list[object]) -> list[tuple[object, int]]:
    """Runs of equal neighbouring keys, with their lengths."""
    runs: list[tuple[object, int]] = []
    for key in keys:
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        else:
            runs.append((key, 1))
    return runs


def board_table(columns: list[Column]) -> list[str]:
    """A sortable table: three header rows (block, set, metric); a column without a block spans all three."""
    def header(index: int, column: Column, span: str = "") -> str:
        better = f' data-better="{column.better}"' if column.better else ""
        return (f'<th{span} data-col="{index}"{better} title="click to sort; again to reverse">'
                f"{escape(column.title)}</th>")

    top, middle, bottom = [], [], []
    index = 0
    # a column without a block is a run of its own (its index makes its key unique)
    for (block, _), width in _spans([(c.block, i if not c.block else -1) for i, c in enumerate(columns)]):
        members = columns[index:index + width]
        if not block:
            top.append(header(index, members[0], ' rowspan="3"'))
            index += 1
            continue
        top.append(f'<th class="group" colspan="{width}">{escape(block)}</th>')
        middle += [f'<th colspan="{span}">{escape(name)}</th>' for name, span in _spans([c.set for c in members])]
        for column in members:
            bottom.append(header(index, column))
            index += 1
    body = ["<tr>" + "".join(cells) + "</tr>" for cells in zip(*(c.cells for c in columns), strict=True)]
    return ['<div class="scroll"><table class="board">', "<thead>",
            *(f"<tr>{''.join(row)}</tr>" for row in (top, middle, bottom) if row), "</thead>", "<tbody>", *body,
            "</tbody></table></div>"]


def reported_section(board: Leaderboard) -> list[str]:
    tables = board.reported
    if not tables:
        return []
    lines = ["<h2>Reported in the papers (not reproduced here)</h2>"]
    for table in tables:
        head = "".join(f"<th>{escape(str(name))}</th>" for name in table.frame.columns)
        rows = ["<tr>" + "".join(text_td(str(v)) if i == 0 else f"<td>{escape(str(v))}</td>"
                                 for i, v in enumerate(values)) + "</tr>"
                for values in table.frame.itertuples(index=False)]
        lines += [f'<p class="legend">{escape(table.caption)}:</p>', '<div class="scroll"><table class="reported">',
                  f"<thead><tr>{head}</tr></thead>", "<tbody>", *rows, "</tbody></table></div>"]
    return lines


def figures_section(board: Leaderboard) -> list[str]:
    """Per label, a collapsed gallery of its figures: thumbnails linked by path relative to this page."""
    by_label: dict[str, list[str]] = {}
    for label, path in board.figures:
        by_label.setdefault(label, []).append(path)
    if not by_label:
        return []
    lines = ["<h2>Figures</h2>", '<p class="legend">Score histograms and outlier galleries of every record, linked by '
             "path relative to this page (open it inside its out directory).</p>"]
    for label, paths in by_label.items():
        items = "".join(f'<figure><a href="../{escape(quote(p))}"><img loading="lazy" src="../{escape(quote(p))}" '
                        f'alt="{escape(p)}"></a><figcaption>{escape(p.rpartition("/")[2])}</figcaption></figure>'
                        for p in paths)
        lines.append(f"<details><summary>{escape(label)} ({len(paths)})</summary>"
                     f'<div class="gallery">{items}</div></details>')
    return lines


def render_html(board: Leaderboard) -> str:
    title = f"Leaderboard: {board.benchmark}"
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{escape(title)}</title>",
             f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{escape(title)}</h1>"]
    for positive, part in board.parts():
        convention = ("ID positive (the papers' convention)" if positive == "id"
                      else "OOD positive (OpenOOD's convention since Aug 2023)")
        legend = escape(board.legend(convention, bold="{bold}", tied="{tied}"))
        legend = legend.replace("{bold}", "<strong>bold</strong>").replace("{tied}", "<em>italic</em>")
        lines += [f'<p class="legend">{legend} Hover a cell for its per-seed values.</p>',
                  *board_table(columns(board, part))]
    if board.deltas:
        lines.append(f'<p class="legend">{escape(delta_legend(board))}</p>')
    lines += reported_section(board) + figures_section(board)
    lines += [f'<p class="legend">Regenerate with <code>{escape(board.command("html"))}</code>; each row comes from '
              f"the JSON records under <code>records/{escape(board.benchmark)}/</code>.</p>",
              f"<script>{SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(lines)
