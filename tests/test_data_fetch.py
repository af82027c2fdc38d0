"""`harness data fetch` against a local HTTP server (Range support, a dead mirror, a dropped connection) serving tiny
archives in the real layouts (cifar-100-python.tar.gz, dtd-r1.0.1.tar.gz, test_32x32.mat, test_256.tar, LSUN.tar.gz,
iSUN.tar.gz), with the spec's own unpack settings and checksums of the fixtures; and `data check`'s per-split path."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_real_data import small_spec, write_cifar_benchmark

from harness.cli import main
from harness.data.check import check_data
from harness.data.spec import download_name, load_spec

# archive name -> (folder of the fixture tree, the archive's top folder) as the real archives hold them
ARCHIVES = {"cifar-100-python.tar.gz": ("cifar-100-python", "cifar-100-python"), "dtd-r1.0.1.tar.gz": ("dtd", "dtd"),
            "test_256.tar": ("places365_test", "test_256"), "LSUN.tar.gz": ("LSUN_C", "LSUN"),
            "iSUN.tar.gz": ("iSUN", "iSUN")}


class FixtureServer(ThreadingHTTPServer):
    """Serves `files` by name, honouring `Range: bytes=N-`; a name in `drop_once` gets its first response cut after
    `drop_after` bytes. `requests` logs (path, Range header) of every GET."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files, self.drop_once, self.drop_after, self.requests = files, set(), 0, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's name)
        name = self.path.lstrip("/").split("?")[0]
        self.server.requests.append((name, self.headers.get("Range")))
        if name not in self.server.files:
            self.send_error(404)
            return
        body, start = self.server.files[name], 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.server.drop_once:
            self.server.drop_once.discard(name)
            self.wfile.write(body[start:start + self.server.drop_after])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


def _tar(source: Path, top: str, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if name.endswith(".gz") else "w") as archive:
        archive.add(source, arcname=top)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    tree = tmp_path_factory.mktemp("tree")
    write_cifar_benchmark(tree)
    built = {name: _tar(tree / folder, top, name) for name, (folder, top) in ARCHIVES.items()}
    return {**built, "test_32x32.mat": (tree / "svhn/test_32x32.mat").read_bytes()}


@pytest.fixture
def server(archives):
    served = FixtureServer(dict(archives))
    thread = threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def local_spec(tmp_path: Path, server: FixtureServer, base: str = "cifar100", urls=None, md5=None) -> Path:
    """The benchmark's spec (expected counts lowered) whose fetch files point at `server`, pinned to the fixtures'
    MD5s; `urls`/`md5` (archive name -> value) replace those of single files."""
    path = small_spec(tmp_path, base)
    raw = json.loads(path.read_text())
    for entry in [raw["id"], *raw["ood"]]:
        for file in entry.get("fetch", {}).get("files", []):
            name = download_name(file)
            file["urls"] = (urls or {}).get(name, [f"{server.url}/{name}"])
            file["md5"] = (md5 or {}).get(name, hashlib.md5(server.files.get(name, b"")).hexdigest())
    path.write_text(json.dumps(raw))
    return path


def fetch(spec: Path, root: Path, *more: str) -> int:
    return main(["data", "fetch", "--benchmark", str(spec), "--data-root", str(root), *more])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetch_puts_every_cifar_set_where_data_check_reads_it(tmp_path, server, capsys):
    spec = local_spec(tmp_path, server)
    root = tmp_path / "data"
    assert fetch(spec, root) == 0
    out = capsys.readouterr().out
    check = check_data(load_spec(str(spec)), root)
    assert [(row.set, row.status) for row in check.rows] == [
        ("ID train", "found"), ("ID test", "found"), ("textures", "found"), ("svhn", "found"),
        ("places365", "found"), ("lsun", "found"), ("isun", "found")]
    assert "7 of 7 sets ready" in out and not (root / ".downloads").exists()
    assert (root / "LSUN_C/test").is_dir() and (root / "places365_test/0000.jpg").is_file()  # top folders renamed

    server.requests.clear()
    assert fetch(spec, root) == 0
    assert "svhn: found, nothing to fetch" in capsys.readouterr().out and server.requests == []


def test_a_checksum_mismatch_is_refused_and_the_download_removed(tmp_path, server, capsys):
    spec = local_spec(tmp_path, server, md5={"test_32x32.mat": "0" * 32})
    root = tmp_path / "data"
    assert fetch(spec, root, "--sets", "svhn") == 1
    err = capsys.readouterr().err
    refused = [line for line in err.splitlines() if "refused" in line]
    assert len(refused) == 1 and "test_32x32.mat" in refused[0] and "0" * 32 in refused[0]
    assert not (root / "svhn").exists() and not list(root.rglob("*.part"))


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path, server, capsys):
    server.drop_once, server.drop_after = {"test_32x32.mat"}, 1000
    assert fetch(local_spec(tmp_path, server), tmp_path / "data", "--sets", "svhn") == 0
    assert [r for r in server.requests if r[0] == "test_32x32.mat"] == [("test_32x32.mat", None),
                                                                       ("test_32x32.mat", "bytes=1000-")]
    assert (tmp_path / "data/svhn/test_32x32.mat").read_bytes() == server.files["test_32x32.mat"]
    assert "resuming" in capsys.readouterr().err


def test_a_dead_mirror_falls_over_to_the_next(tmp_path, server, capsys):
    mirrors = [f"http://127.0.0.1:{free_port()}/iSUN.tar.gz", f"{server.url}/gone/iSUN.tar.gz",
               f"{server.url}/iSUN.tar.gz"]
    assert fetch(local_spec(tmp_path, server, urls={"iSUN.tar.gz": mirrors}), tmp_path / "data", "--sets", "isun") == 0
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "HTTP 404" in err
    assert len(list((tmp_path / "data/iSUN/iSUN_patches").iterdir())) == 6


def test_an_archive_member_outside_the_target_is_refused(tmp_path, server, capsys):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("../escaped.txt")
        archive.addfile(member, io.BytesIO(b""))
    server.files["iSUN.tar.gz"] = buffer.getvalue()
    assert fetch(local_spec(tmp_path, server), tmp_path / "data", "--sets", "isun") == 1
    assert "was refused while extracting" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data/iSUN").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, server, capsys):
    spec = local_spec(tmp_path, server)
    assert fetch(spec, tmp_path / "new", "--sets", "svhn,nope") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no set 'nope'" in err and not (tmp_path / "new").exists()
    (tmp_path / "a_file").write_text("")
    assert fetch(spec, tmp_path / "a_file") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not writable" in err and server.requests == []


def test_a_set_with_no_public_source_gets_its_steps_and_a_failing_status(tmp_path, server, capsys):
    assert fetch(local_spec(tmp_path, server, "imagenet100"), tmp_path / "data", "--sets", "id") == 1
    out = capsys.readouterr().out
    assert "id: no public download; by hand:" in out and "ILSVRC2012_img_val.tar" in out
    assert f"{tmp_path / 'data'}/imagenet/train" in out and "`data check` then reads" in out


def test_a_bad_fetch_entry_in_a_spec_is_one_line(tmp_path, capsys):
    raw = json.loads(Path("datasets/cifar100.json").read_text())
    raw["ood"][1]["fetch"]["files"][0]["md5"] = "abc"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    assert main(["data", "check", "--benchmark", str(tmp_path / "bad.json"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ood 'svhn' fetch file 1 needs one checksum" in err


def test_data_check_names_each_split_s_own_openood_image_list(tmp_path):
    rows = {row.set: row.path for row in check_data(load_spec("cifar100"), tmp_path).rows}
    assert rows["ID train"].endswith("benchmark_imglist/cifar100/train_cifar100.txt")
    assert rows["ID test"].endswith("benchmark_imglist/cifar100/test_cifar100.txt")
