"""`harness data fetch`: download the sets `harness data check` reports missing, from the sources a spec pins.

A set entry's `fetch` either lists `files` or gives `manual` steps (a set with no public source: ImageNet needs an
account). Each file has `urls` (mirrors, tried in order), an `md5` or `sha256`, and how it unpacks: `file` (the
download goes to `to`) or `tar` (extracted under `to`; with `strip`, only the archive's `strip/` folder, its content
going to `to`). A download goes to `<data root>/.downloads/<name>.part`, resumes with an HTTP Range request after a
dropped connection, and is checked against its pinned checksum (pooch) before anything is unpacked; a mismatch
removes it. Archives are extracted with tarfile's `data` filter (no member outside the target, no links out, no
device files) into a staging folder, then moved into place: a set is either absent or whole.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.data.check import check_data
from harness.data.readers import DATA_ROOT_ENV
from harness.data.spec import BenchmarkSpec, download_name
from harness.errors import HarnessError
from harness.paths import path_under

DOWNLOADS = ".downloads"
TIMEOUT_S = 60
CHUNK = 1 << 20
ATTEMPTS_PER_MIRROR = 5  # tries of one mirror, as long as each one adds bytes


class FetchFailed(Exception):
    """A file could not be fetched from any mirror (the message says why, in one line)."""


def _writable_root(given: Path | None) -> Path:
    """The data root to fetch into (`--data-root`, else $OODBENCH_DATA), created if absent, with its downloads
    folder; one line when it cannot be written."""
    text = str(given) if given is not None else os.environ.get(DATA_ROOT_ENV)
    if not text:
        raise HarnessError(f"data fetch needs a data root: pass --data-root DIR or set {DATA_ROOT_ENV}")
    root = Path(text).expanduser()
    try:
        (root / DOWNLOADS).mkdir(parents=True, exist_ok=True)
        probe = root / DOWNLOADS / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"data root {root} is not writable ({err.strerror or err}); pass a directory you can "
                           "write to") from None
    return root.resolve()


def set_entries(spec: BenchmarkSpec, names: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """The set entries to fetch by name ("id" for the ID set): all of them, or `names` (unknown ones: one line)."""
    entries = {"id": spec.id, **{entry["name"]: entry for entry in spec.ood}}
    unknown = [name for name in names or () if name not in entries]
    if unknown:
        raise HarnessError(f"benchmark {spec.name} has no set {unknown[0]!r}; choose from {', '.join(entries)}")
    return {name: entries[name] for name in names} if names else entries


def fetch_sets(spec: BenchmarkSpec, data_root: Path | None, names: Sequence[str] | None = None) -> list[str]:
    """Fetch each requested set that is missing under the data root (`data_root`, else $OODBENCH_DATA; created if
    absent), or print its manual steps; return the names requested."""
    entries = set_entries(spec, names)
    root = _writable_root(data_root)
    check = check_data(spec, root)
    for name, entry in entries.items():
        rows = [row for row in check.rows if row.entry == name]
        statuses = {row.status for row in rows}
        if statuses <= {"found", "embedded"}:
            print(f"{name}: {'/'.join(sorted(statuses))}, nothing to fetch")
        elif "manual" in entry.get("fetch", {}) or "fetch" not in entry:
            print_manual_steps(name, entry, root)
        elif check.chosen[name] is not None:
            print(f"{name}: {rows[0].status} at {rows[0].path}; fetch fills only missing sets: move it away and rerun "
                  "to download it again")
        else:
            print(f"{name}: fetching into {root}")
            try:
                for file in entry["fetch"]["files"]:
                    fetch_file(file, root)
            except FetchFailed as err:
                print(f"error: {name}: {err}", file=sys.stderr)
    _remove_if_empty(root / DOWNLOADS)
    return list(entries)


def print_manual_steps(name: str, entry: dict[str, Any], root: Path) -> None:
    """The steps a person takes for a set with no public download, ending with the layout `data check` reads."""
    steps = entry.get("fetch", {}).get("manual") or [f"download it from {entry.get('from', 'its source')}"]
    print(f"{name}: no public download; by hand:")
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step.replace('{root}', str(root))}")
    layouts = [location.get("layout") or location.get("path", "") for location in entry.get("locations", [])]
    print(f"  `data check` then reads, under {root}: {' or '.join(filter(None, layouts)) or entry.get('path', '')}")


def fetch_file(file: dict[str, Any], root: Path) -> None:
    """Download one spec file (mirror after mirror), verify its checksum and unpack it under `root`."""
    import pooch
    import requests
    import urllib3

    name = download_name(file)
    part = path_under(root, DOWNLOADS, f"{name}.part")
    algorithm = "sha256" if "sha256" in file else "md5"
    failures = []
    for url in file["urls"]:
        try:
            _download_resuming(url, part)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
            failures.append(f"{url} ({_reason(err)})")
            print(f"  {url} failed ({_reason(err)})" + ("; trying the next mirror" if url != file["urls"][-1] else ""),
                  file=sys.stderr)
            continue
        actual = pooch.file_hash(str(part), alg=algorithm)
        if actual != file[algorithm]:
            part.unlink()
            failures.append(f"{url} (checksum mismatch)")
            print(f"error: refused {name} from {url}: its {algorithm} is {actual}, the spec pins {file[algorithm]}; "
                  "the download was removed", file=sys.stderr)
            continue
        _unpack(part, file, root)
        return
    raise FetchFailed(f"could not fetch {name} from any mirror: {'; '.join(failures)}")


def _reason(err: Exception) -> str:
    response = getattr(err, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(err).__name__


def _download_resuming(url: str, part: Path) -> None:
    """Download `url` into `part`, continuing from the bytes `part` holds; a dropped connection is retried with a
    Range request as long as each try adds bytes. Raises requests' / urllib3's errors when the mirror fails."""
    import requests
    import urllib3

    for attempt in range(ATTEMPTS_PER_MIRROR):
        before = part.stat().st_size if part.exists() else 0
        try:
            _download_once(url, part)
            return
        except (requests.RequestException, urllib3.exceptions.HTTPError):
            grew = part.exists() and part.stat().st_size > before
            if not grew or attempt == ATTEMPTS_PER_MIRROR - 1:
                raise
            print(f"  connection to {url} dropped after {part.stat().st_size:,} bytes; resuming", file=sys.stderr)


def _download_once(url: str, part: Path) -> None:
    import requests
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as response:
        if response.status_code == 416 and have:  # the part already holds the whole file
            return
        response.raise_for_status()
        if response.status_code == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            part.unlink()
            raise requests.ConnectionError(f"{url} answered another range than bytes={have}-")
        if response.status_code != 206:  # the server ignored the range: start over
            have = 0
        length = int(response.headers.get("Content-Length", 0))
        with open(part, "ab" if have else "wb") as out, \
                tqdm(total=have + length or None, initial=have, unit="B", unit_scale=True,
                     desc=part.name.removesuffix(".part"), disable=None, file=sys.stderr) as bar:
            for chunk in response.raw.stream(CHUNK, decode_content=False):  # the bytes as served (checksummed)
                out.write(chunk)
                bar.update(len(chunk))


def _unpack(download: Path, file: dict[str, Any], root: Path) -> None:
    """Put a verified download in place: the file itself at `to`, or a tar archive's members under `to`."""
    target = path_under(root, file["to"]) if file.get("to") else root
    if file["unpack"] == "file":
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(download, target)
        return
    staging = download.with_suffix(".extract")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(download) as archive:
            archive.extractall(staging, filter=_members_under(file.get("strip", "")))
        if not staging.is_dir():
            raise FetchFailed(f"{download_name(file)} holds nothing under {file.get('strip')!r}; fix the spec's strip")
        _move_into(staging, target)
    except tarfile.TarError as err:
        raise FetchFailed(f"{download_name(file)} was refused while extracting ({err}); nothing was put in place") \
            from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    download.unlink()


def _members_under(strip: str) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """tarfile's `data` filter, taking only the members under `strip/` (that prefix removed) when `strip` is given."""
    prefix = f"{strip.strip('/')}/" if strip else ""

    def member_filter(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo | None:
        if prefix:
            if not member.name.startswith(prefix) or member.name == prefix:
                return None
            link = member.linkname.removeprefix(prefix) if member.islnk() else member.linkname
            member = member.replace(name=member.name.removeprefix(prefix), linkname=link, deep=False)
        return tarfile.data_filter(member, destination)

    return member_filter


def _move_into(source: Path, target: Path) -> None:
    """Move the tree `source` to `target`, keeping whatever `target` already holds."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    for child in source.iterdir():
        destination = target / child.name
        if child.is_dir() and destination.is_dir():
            _move_into(child, destination)
        elif not destination.exists():
            os.replace(child, destination)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
