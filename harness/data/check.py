"""`harness data check`: for each set of a benchmark spec, which of its locations exists under the data root, what it
holds (counts, readability), where it comes from; and the one message a run prints when data is missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data.sources import get_probe, source_is_cached
from harness.data.spec import BenchmarkSpec, locations


@dataclass(frozen=True)
class DataRow:
    """One line of `harness data check`: a set (or an ID split), its status and where it was looked for."""

    set: str
    status: str
    count: int | None
    expected: int | None
    path: str
    detail: str = ""
    layout: str = ""
    origin: str = ""

    @property
    def entry(self) -> str:
        """The spec entry this row reports: "id" for the ID splits, else the set's (or encoder's) label."""
        return "id" if self.set.startswith("ID ") else self.set


@dataclass(frozen=True)
class DataCheck:
    rows: tuple[DataRow, ...]
    chosen: dict[str, dict[str, Any]]   # set name ("id" for the ID entry) -> the location that will be read

    def problems(self, allow_incomplete: bool = False) -> list[DataRow]:
        ok = {"found", "embedded"} | ({"incomplete"} if allow_incomplete else set())
        return [row for row in self.rows if row.status not in ok]


def _probe_location(location: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None) -> Any:
    probe = get_probe(location["source"])
    if probe is None:
        return None
    options = {k: v for k, v in location.items() if k != "source"}
    options.setdefault("class_names", list(spec.class_names))
    return probe(data_root=data_root, **options)


def _where(location: dict[str, Any], data_root: Path | None, split: str) -> str:
    """The file or folder a location reads `split` from (an OpenOOD location: that split's image list)."""
    lists = location.get("imglists") or {}
    relative = Path(location["path"]) / (location.get("imglist") or lists.get(split, ""))
    return str(data_root / relative if data_root else relative)


def _entry_rows(label: str, entry: dict[str, Any], spec: BenchmarkSpec, data_root: Path | None,
                splits: tuple[str, ...]) -> tuple[list[DataRow], dict[str, Any]]:
    """Probe the locations of one set in order; the first one not missing is the one reported and read."""
    tried, details = [], []
    for location in locations(entry):
        if data_root is None and reads_under_root(location):
            tried.append(location)
            details.append("no data root")
            continue
        probes = _probe_location(location, spec, data_root)
        if probes is None:
            return [DataRow(f"{label} {s}".strip(), "embedded", None, None, f"source {location['source']}")
                    for s in splits], location
        probes = probes if isinstance(probes, dict) else dict.fromkeys(splits, probes)
        if all(p.status == "missing" for p in probes.values()):
            tried.append(location)
            details += [p.detail for p in list(probes.values())[:1] if p.detail]
            continue
        rows = [DataRow(f"{label} {split}".strip(), p.status, p.count, p.expected, p.path, p.detail,
                        location.get("layout", ""), entry.get("from", "")) for split, p in probes.items()]
        return rows, location
    layouts = " or ".join(loc.get("layout", loc["path"]) for loc in tried)
    expected = entry.get("expected")
    rows = [DataRow(f"{label} {split}".strip(), "missing", None,
                    expected.get(split) if isinstance(expected, dict) else expected,
                    " or ".join(_where(loc, data_root, split) for loc in tried),
                    "; ".join(dict.fromkeys(details)), layouts, entry.get("from", "")) for split in splits]
    return rows, None


def reads_data_root(spec: BenchmarkSpec) -> bool:
    """Whether any set of `spec` (or its text encoder) is read from under the data root (embedded benchmarks need
    none)."""
    encoder = str(spec.text_encoder.get("path", ""))
    return bool(encoder and not Path(encoder).expanduser().is_absolute()) or any(
        reads_under_root(location) for entry in [spec.id, *spec.ood] for location in locations(entry))


def reads_under_root(location: dict[str, Any]) -> bool:
    """Whether a set's location is read from under the data root: a source read from disk (not built from package
    data and cached) at a relative path."""
    return not source_is_cached(location["source"]) and not Path(location.get("path", "")).is_absolute()


def _encoder_row(spec: BenchmarkSpec, data_root: Path | None) -> DataRow | None:
    """The text encoder's local directory, when the spec names one (e.g. ALBERT Base v2)."""
    from harness.data.text import encoder_directory, probe_encoder_directory

    encoder = spec.text_encoder
    if not encoder.get("path"):
        return None
    label = f"encoder {encoder['name']}"
    if data_root is None and not Path(str(encoder["path"])).expanduser().is_absolute():
        return DataRow(label, "missing", None, None, str(encoder["path"]), "no data root",
                       str(encoder.get("layout", "")), str(encoder.get("from", "")))
    probe = probe_encoder_directory(encoder_directory(encoder, data_root))
    return DataRow(label, probe.status, None, None, probe.path, probe.detail, str(encoder.get("layout", "")),
                   str(encoder.get("from", "")))


def check_data(spec: BenchmarkSpec, data_root: Path | None) -> DataCheck:
    """Probe every set of `spec` under `data_root` (cheap: counts and headers, no decoding)."""
    rows, chosen = [], {}
    id_rows, chosen["id"] = _entry_rows("ID", spec.id, spec, data_root, ("train", "test"))
    rows += id_rows
    for entry in spec.ood:
        entry_rows, chosen[entry["name"]] = _entry_rows(entry["name"], entry, spec, data_root, ("",))
        rows += entry_rows
    encoder = _encoder_row(spec, data_root)
    return DataCheck(tuple(rows + ([encoder] if encoder else [])), chosen)


def data_problem_message(spec: BenchmarkSpec, check: DataCheck, allow_incomplete: bool) -> str | None:
    """One line naming the first unusable set, or None when every set can be read."""
    problems = check.problems(allow_incomplete)
    if not problems:
        return None
    row = problems[0]
    unit = "texts" if spec.modality == "text" else "images"
    what = {"missing": "is missing", "incomplete": f"is incomplete ({row.count} of {row.expected} {unit})",
            "corrupted": "is corrupted", "mismatch": "does not match the spec",
            "unavailable": "is unavailable"}.get(row.status, row.status)
    more = f" and {len(problems) - 1} more set(s) need attention" if len(problems) > 1 else ""
    detail = f": {row.detail}" if row.detail else ""
    hint = " (or pass --allow-incomplete)" if row.status == "incomplete" else ""
    return (f"benchmark {spec.name}: set {row.set!r} {what} at {row.path}{detail}{more}; see `python -m harness data "
            f"check --benchmark {spec.name}` for the expected layout{hint}")
