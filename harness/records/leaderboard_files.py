"""Leaderboard files: one benchmark's leaderboard (`harness.records.leaderboard.Leaderboard`) written as
`<out>/leaderboards/<benchmark>.<suffix>` in each requested format, by the format's renderer."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from harness.cache import atomic_write_bytes
from harness.errors import HarnessError
from harness.paths import check_name, path_under
from harness.records.exports import render_csv, render_json, render_openood
from harness.records.html import render_html
from harness.records.leaderboard import Leaderboard, build_leaderboard, render_markdown
from harness.records.results import RunRecord, load_records

FORMATS = ("md", "html", "csv", "json", "openood")
DEFAULT_FORMATS = ("md", "html")
SUFFIX = {"md": ".md", "html": ".html", "csv": ".csv", "json": ".json", "openood": ".openood.csv"}
RENDERERS: dict[str, Callable[[Leaderboard], str]] = {"md": render_markdown, "html": render_html, "csv": render_csv,
                                                      "json": render_json, "openood": render_openood}


def leaderboard_path(out_dir: Path, benchmark: str, fmt: str = "md") -> Path:
    return path_under(out_dir, "leaderboards", f"{check_name(benchmark, 'benchmark name')}{SUFFIX[fmt]}")


def write_leaderboards(out_dir: Path, benchmarks: list[str] | None = None, metrics: tuple[str, ...] | None = None,
                       formats: tuple[str, ...] = DEFAULT_FORMATS) -> dict[str, dict[str, Path]]:
    """Regenerate `<out>/leaderboards/<benchmark>.<format>` for every benchmark with records (or the given ones)
    in each of `formats`, with the columns `metrics` (default: each benchmark's `leaderboard_metrics`); every file
    is rendered before the first is written. Returns benchmark -> format -> path."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise HarnessError(f"--format {','.join(unknown) or '(empty)'}: choose from {','.join(FORMATS)}")
    by_benchmark: dict[str, list[RunRecord]] = defaultdict(list)
    for record in load_records(out_dir):
        by_benchmark[record.benchmark].append(record)
    rendered: dict[str, dict[str, tuple[Path, bytes]]] = {}
    for name in sorted(by_benchmark if benchmarks is None else set(benchmarks) & set(by_benchmark)):
        board = build_leaderboard(by_benchmark[name], name, metrics, out_dir)
        rendered[name] = {fmt: (leaderboard_path(out_dir, name, fmt), RENDERERS[fmt](board).encode())
                          for fmt in dict.fromkeys(formats)}
    for files in rendered.values():
        for path, content in files.values():
            atomic_write_bytes(path, content)
    return {name: {fmt: path for fmt, (path, _) in files.items()} for name, files in rendered.items()}
