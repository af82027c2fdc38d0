"""Per-sample scores, `metrics`, `submit` and `verify` (docs/submissions.md) on one tiny run (msp on the tiny copy of
mnist5k, seed 0) made once for the module: metrics recompute the record exactly, an untouched bundle verifies clean,
and a tampered score, a wrong split and an edited metric are each named; hostile files are refused in one line."""

import io
import json
import shutil
import tarfile
from dataclasses import replace

import numpy as np
import pytest

from harness.cli import main
from harness.data.fingerprints import ID_SET
from harness.records.bundle import FINGERPRINTS, MANIFEST, read_bundle, record_member, scores_member, seal
from harness.records.results import parse_record, read_record
from harness.records.scores import (
    SetScores,
    check_against_record,
    decode_scores,
    encode_scores,
    published_form,
    read_scores,
)
from tests.regress_helpers import TINY_PRESET, write_tiny_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, session_cache):
    """One run with --save-scores and its bundle."""
    root = tmp_path_factory.mktemp("submission")
    spec = write_tiny_spec(root)
    out = root / "run"
    assert main(["run", "--methods", "msp", "--benchmark", str(spec), "--preset", TINY_PRESET, "--out", str(out),
                 "--cache-dir", str(session_cache.root), "--save-scores"]) == 0
    record_path = next((out / "records").rglob("seed0.json"))
    bundle = root / "submission.tar.gz"
    assert main(["submit", "--records", str(out), "--out", str(bundle)]) == 0
    return {"root": root, "spec": spec, "out": out, "record": read_record(record_path), "record_path": record_path,
            "bundle": bundle, "cache": session_cache.root}


def verify(tiny, capsys, bundle):
    code = main(["verify", str(bundle), "--benchmark", str(tiny["spec"]), "--cache-dir", str(tiny["cache"])])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def resealed(tiny, tmp_path, edit):
    """The fixture's bundle with `edit(members)` applied and the manifest rewritten, as a hostile submitter would."""
    members = read_bundle(tiny["bundle"])
    del members[MANIFEST]
    edit(members)
    path = tmp_path / "edited.tar.gz"
    path.write_bytes(seal(members))
    return path


def test_scores_recompute_every_metric_of_the_record_exactly(tiny, capsys):
    record = tiny["record"]
    scores = read_scores(tiny["out"] / record.scores_file)
    assert record.scores_file == scores_member(record)
    assert [s.name for s in scores.sets] == [ID_SET, "glyphs", "textures", "photos", "faces", "noise"]
    assert {s.name: len(s.scores) for s in scores.sets} == record.eval_sizes
    assert all(s.scores.dtype == np.float64 and s.ids.tolist() == list(range(len(s.scores))) for s in scores.sets)
    per_set, average = scores.metrics()
    assert per_set == record.metrics and average == record.average  # exact, every bit
    assert main(["metrics", "--scores", str(tiny["out"] / record.scores_file)]) == 0
    out = capsys.readouterr().out
    assert "FPR95 positive id, rule recall-at-least;" in out
    rows = {cells[0]: [float(c) for c in cells[1:]] for line in out.splitlines()[3:]
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    metric_names = ["fpr95", "auroc", "aupr_in", "aupr_out"]
    assert rows == {name: [values[m] for m in metric_names] for name, values in [*record.metrics.items(),
                                                                                ("Average", record.average)]}
    assert main(["metrics", "--scores", str(tiny["out"] / record.scores_file), "--fpr-rule", "hendrycks"]) == 0
    assert "rule hendrycks (the file's: id, recall-at-least)" in capsys.readouterr().out


def test_an_untouched_bundle_verifies_clean(tiny, capsys):
    code, lines, _ = verify(tiny, capsys, tiny["bundle"])
    assert code == 0 and len(lines) == 1, lines
    assert lines[0] == ("verify: OK; 1 of 1 records give every metric exactly from their scores, 6 set fingerprints "
                        "match the local data, 4 member hashes match the manifest")


def tamper_score(members, record):
    """Raise glyphs' lowest-scoring item above every ID score: AUROC must change."""
    scores = decode_scores(members[scores_member(record)])
    glyphs = scores.sets[1]
    changed = glyphs.scores.copy()
    changed[np.argmin(changed)] = scores.sets[0].scores.max() + 1
    sets = (scores.sets[0], SetScores(glyphs.name, glyphs.fingerprint, glyphs.ids, changed), *scores.sets[2:])
    members[scores_member(record)] = encode_scores(replace(scores, sets=sets))


def test_a_tampered_score_is_named_by_its_metric_and_by_the_manifest(tiny, tmp_path, capsys):
    record = tiny["record"]
    code, lines, _ = verify(tiny, capsys, resealed(tiny, tmp_path, lambda m: tamper_score(m, record)))
    assert code == 1 and lines[-1].startswith("verify: FAILED")
    where = f"record tiny5k/{record.label}/seed0: set glyphs auroc stored {record.metrics['glyphs']['auroc']!r}, " \
            "recomputed "
    assert any(line.startswith(where) for line in lines), lines
    assert not any("set textures" in line for line in lines)
    unsealed = tmp_path / "unsealed.tar.gz"
    members = read_bundle(tiny["bundle"])
    tamper_score(members, record)
    with tarfile.open(unsealed, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    code, lines, _ = verify(tiny, capsys, unsealed)
    assert code == 1 and any(line.startswith(f"member {scores_member(record)}: sha256 ") for line in lines), lines


def test_scores_of_another_set_are_caught_by_the_fingerprint(tiny, tmp_path, capsys):
    """A consistent forgery: noise's scores under the name glyphs, the record's numbers recomputed to match, bundled
    by `submit` (which finds scores and record agree); only the local data can tell."""
    out = tmp_path / "run"
    shutil.copytree(tiny["out"], out)
    record = tiny["record"]
    scores = read_scores(out / record.scores_file)
    by_name = {s.name: s for s in scores.sets}
    noise = by_name["noise"]
    by_name["glyphs"] = SetScores("glyphs", noise.fingerprint, noise.ids, noise.scores)
    forged = replace(scores, sets=tuple(by_name.values()))
    (out / record.scores_file).write_bytes(encode_scores(forged))
    per_set, average = forged.metrics()
    raw = json.loads(tiny["record_path"].read_text())
    raw.update(metrics=per_set, average=average)
    (out / tiny["record_path"].relative_to(tiny["out"])).write_text(json.dumps(raw))
    bundle = tmp_path / "forged.tar.gz"
    assert main(["submit", "--records", str(out), "--out", str(bundle)]) == 0
    capsys.readouterr()
    code, lines, _ = verify(tiny, capsys, bundle)
    assert code == 1 and len(lines) == 2, lines
    glyphs = next(s for s in scores.sets if s.name == "glyphs")
    assert lines[0] == (f"record tiny5k/{record.label}/seed0: set glyphs fingerprint stored {noise.fingerprint}, "
                        f"local data {glyphs.fingerprint} (benchmark tiny5k, preset {TINY_PRESET})")


def test_an_edited_metric_is_named_with_both_values(tiny, tmp_path, capsys):
    record = tiny["record"]

    def edit(members):
        raw = json.loads(members[record_member(record)])
        raw["metrics"]["faces"]["fpr95"] = 0.0123
        members[record_member(record)] = json.dumps(raw).encode()

    code, lines, _ = verify(tiny, capsys, resealed(tiny, tmp_path, edit))
    assert code == 1 and len(lines) == 2, lines
    assert lines[0] == (f"record tiny5k/{record.label}/seed0: set faces fpr95 stored 0.0123, recomputed "
                        f"{record.metrics['faces']['fpr95']!r}")


def test_submit_refuses_records_without_scores_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny["out"], out)
    path = out / tiny["record_path"].relative_to(tiny["out"])
    path.write_text(json.dumps({**json.loads(path.read_text()), "scores_file": None}))
    assert main(["submit", "--records", str(out), "--out", str(tmp_path / "b.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of 1 records have no per-sample scores" in err and "--save-scores" in err
    assert not (tmp_path / "b.tar.gz").exists()


def hostile_tar(path, name, kind=tarfile.REGTYPE, data=b"x"):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, 0 if kind != tarfile.REGTYPE else len(data)
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def test_a_corrupt_or_hostile_file_is_refused_in_one_line_without_extracting(tiny, tmp_path, capsys):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(tiny["bundle"].read_bytes()[:200])
    cases = {
        garbage: "not a readable .tar.gz",
        truncated: "not a readable .tar.gz",
        hostile_tar(tmp_path / "up.tar.gz", "../escape.json"): "member '../escape.json' is not a name a bundle holds",
        hostile_tar(tmp_path / "abs.tar.gz", "/etc/cron.d/x"): "member '/etc/cron.d/x' is not a name",
        hostile_tar(tmp_path / "link.tar.gz", MANIFEST, tarfile.SYMTYPE): "is not a regular file",
        hostile_tar(tmp_path / "plain.tar.gz", FINGERPRINTS, data=b"{}"): f"(no {MANIFEST})",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for path, message in cases.items():
        code, lines, err = verify(tiny, capsys, path)
        assert code == 2 and not lines, (path, lines)
        assert err.startswith(f"error: {path} is not an oodbench submission") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_publish_stores_float32_only_where_every_metric_survives_the_rounding(tiny):
    scores = read_scores(tiny["out"] / tiny["record"].scores_file)

    def stored_dtypes(data):
        with np.load(io.BytesIO(data)) as npz:
            return {npz[key].dtype for key in npz.files if key.startswith("scores_")}

    def with_scores(values):
        """The scores with each set's values replaced, and a record of the numbers they give."""
        changed = replace(scores, sets=tuple(replace(s, scores=v) for s, v in zip(scores.sets, values, strict=True)))
        per_set, average = changed.metrics()
        raw = {**json.loads(tiny["record_path"].read_text()), "metrics": per_set, "average": average}
        return parse_record(json.dumps(raw).encode()), changed

    rounded = with_scores([s.scores.astype(np.float32).astype(np.float64) for s in scores.sets])
    assert stored_dtypes(published_form(*rounded)) == {np.dtype(np.float32)}
    top = scores.sets[0].scores.max()
    near = np.full(len(scores.sets[1].scores), np.nextafter(top, np.inf))  # above every ID score in float64 only
    tied = with_scores([scores.sets[0].scores, near, *(s.scores for s in scores.sets[2:])])
    assert stored_dtypes(published_form(*tied)) == {np.dtype(np.float64)}
    for record, values in (rounded, tied):
        assert not check_against_record(record, decode_scores(published_form(record, values)))


def test_a_file_backed_set_is_fingerprinted_by_its_bytes_wherever_it_lies(tmp_path):
    from PIL import Image

    from harness.cache import Cache
    from harness.data.fingerprints import content_fingerprint, item_ids
    from harness.data.sets import FileImageSet

    def file_set(root, shade=0):
        (root / "ood").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 40 * i + shade).save(root / "ood" / f"{i}.png")
        return FileImageSet("ood", tuple(str(root / "ood" / f"{i}.png") for i in range(3)), 8, 1)

    cache = Cache(tmp_path / "cache")
    here, moved, edited = file_set(tmp_path / "a"), file_set(tmp_path / "b"), file_set(tmp_path / "c", shade=1)
    assert here.fingerprint != moved.fingerprint  # the cheap cache key names paths; the content fingerprint does not
    assert content_fingerprint(here, cache) == content_fingerprint(moved, cache) != content_fingerprint(edited, cache)
    assert content_fingerprint(here, cache) == content_fingerprint(here, cache)
    assert [kind for stage, _, kind in cache.events if stage == "set-fingerprint"] == ["miss"] * 3 + ["hit"] * 2
    assert item_ids(here, tmp_path / "a").tolist() == ["ood/0.png", "ood/1.png", "ood/2.png"]
