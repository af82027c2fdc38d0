"""Command line: `python -m harness run | list | leaderboard | data check`.

Input problems are `HarnessError`s: printed as one `error: ...` line on stderr with exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import HarnessError, run_command


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one integer, e.g. --seeds 0")
    return seeds


def _ood(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--ood {text!r} must look like NAME=PATH, e.g. --ood cats=~/data/cats")
    return name, path


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
    run.add_argument("--ood", action="append", type=_ood, default=[], metavar="NAME=PATH",
                     help="add an image folder as an extra OOD set (repeatable)")
    run.add_argument("--out", type=Path, default=Path("results"), help="records/leaderboard directory")
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
    run.add_argument("--allow-incomplete", action="store_true",
                     help="run even when a set has fewer images than the spec expects (recorded in each record)")

    sub.add_parser("list", help="list every method with its kind, paper and settings")

    board = sub.add_parser("leaderboard", help="regenerate leaderboard markdown from the records")
    board.add_argument("--out", type=Path, default=Path("results"), help="directory holding records/")
    board.add_argument("--benchmark", action="append", default=None, help="only this benchmark (repeatable)")

    data = sub.add_parser("data", help="inspect benchmark data on disk")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    check = data_sub.add_parser("check", help="table of every set: found / missing / incomplete / corrupted")
    check.add_argument("--benchmark", default="cifar100", help="benchmark name or spec .json path (default cifar100)")
    check.add_argument("--data-root", type=Path, default=None, help="data directory (default $OODBENCH_DATA)")
    return parser


def cmd_list() -> None:
    from harness.config import describe_fields
    from harness.registry import discover

    for name, entry in sorted(discover().items()):
        info = entry.cls.info
        print(f"{name}  [{info.kind}]  {info.paper}  — {info.summary}  ({entry.source})")
        for field, type_name, default in describe_fields(entry.cls.Config):
            print(f"    {name}.{field}: {type_name} = {default!r}")
        for bench, values in sorted(entry.cls.benchmark_defaults.items()):
            print(f"    on {bench}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))


def cmd_run(args: argparse.Namespace) -> None:
    from harness.config import parse_set_options
    from harness.leaderboard import benchmark_markdown
    from harness.results import load_records
    from harness.runner import RunRequest, execute

    extra = dict(args.ood)
    if len(extra) != len(args.ood):
        raise HarnessError("--ood names must be distinct; give each extra OOD folder its own NAME")
    request = RunRequest(methods=args.methods, benchmark=args.benchmark, seeds=args.seeds,
                         overrides=parse_set_options(args.settings), out_dir=args.out, cache_dir=args.cache_dir,
                         device=args.device, fpr_positive=args.fpr_positive,
                         fpr_rule=args.fpr_rule, extra_ood=extra,
                         data_root=args.data_root, preset=args.preset, allow_incomplete=args.allow_incomplete)
    records = execute(request)
    labels = {r.label for r in records}
    benchmark = records[0].benchmark
    rows = [r for r in load_records(args.out, benchmark) if r.label in labels]
    print(benchmark_markdown(rows, benchmark))
    print(f"records under {args.out / 'records' / benchmark}, leaderboard {args.out / 'leaderboards' / benchmark}.md")


def cmd_leaderboard(args: argparse.Namespace) -> None:
    from harness.leaderboard import write_leaderboards

    if not (args.out / "records").is_dir():
        raise HarnessError(f"no records under {args.out / 'records'}; run `python -m harness run` first or pass --out")
    written = write_leaderboards(args.out, args.benchmark)
    if not written:
        raise HarnessError(f"no records for {', '.join(args.benchmark or ['any benchmark'])} under {args.out}")
    for path in written.values():
        print(path.read_text())
        print(f"wrote {path}")


def cmd_data_check(args: argparse.Namespace) -> int:
    """Print the data table; exit status 1 when any set is not usable as is."""
    from tabulate import tabulate

    from harness.benchmarks import check_data, load_spec
    from harness.real_data import DATA_ROOT_ENV, resolve_data_root

    spec = load_spec(args.benchmark)
    root = resolve_data_root(args.data_root)
    check = check_data(spec, root)
    print(f"benchmark {spec.name}, data root {root or f'(none: pass --data-root or set ${DATA_ROOT_ENV})'}")
    rows = [(r.set, r.status, "" if r.count is None else r.count, "" if r.expected is None else r.expected, r.path)
            for r in check.rows]
    print(tabulate(rows, headers=("set", "status", "images", "expected", "path looked at"), tablefmt="github"))
    problems = check.problems()
    for row in problems:
        print(f"\n{row.set}: {row.status}" + (f" ({row.detail})" if row.detail else ""))
        if row.layout:
            print(f"  expected layout: {row.layout}")
        if row.origin:
            print(f"  from: {row.origin}")
    print(f"\n{len(check.rows) - len(problems)} of {len(check.rows)} sets ready.")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    def command() -> int | None:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list()
        if args.command == "data":
            return cmd_data_check(args)
        return cmd_leaderboard(args)

    return run_command(command, "interrupted; finished stages are cached and a rerun resumes from them")
