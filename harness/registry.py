"""Method registry: built-in plugins from the `methods` package plus third-party plugins from the entry-point group
`oodbench.methods` (value `module:Class` or `module`, whose `Method` subclasses are all registered). The former group
`harness.methods` is still read, with one deprecation line per plugin.

The core never names a plugin: it only walks the package and the entry points.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

from harness.config import build_config, config_fields, current_names
from harness.contract import Method, MethodInfo, MethodKind
from harness.errors import HarnessError

ENTRY_POINT_GROUP = "oodbench.methods"
DEPRECATED_GROUP = "harness.methods"  # read too, with a warning naming the plugin and the fix
BUILTIN_PACKAGE = "methods"


@dataclass(frozen=True)
class Registered:
    cls: type[Method]
    source: str  # where it came from: "methods.knn" or "entry point knn2 = pkg.mod:Class (dist)"
    distribution: str | None = None  # the installed distribution that provides it, when one does

    @property
    def name(self) -> str:
        return self.cls.info.name

    @property
    def builtin(self) -> bool:
        return self.cls.__module__.split(".")[0] == BUILTIN_PACKAGE

    @functools.cached_property
    def identity(self) -> dict[str, str]:
        """The plugin's distribution, version and source hash (`plugin_identity`), stored in every record; hashed
        when first asked for, so only the methods a run plans read their sources."""
        return plugin_identity(self.cls, self.distribution)

    @property
    def cache_scope(self) -> tuple[Any, ...]:
        """What the cached stages a plugin computes are keyed by, beyond their inputs: nothing for a built-in method
        (its stages carry version constants, held to their sources by the suite), the distribution, version and
        source hash for a third-party plugin, whose code can change without any constant moving."""
        return () if self.builtin else (self.identity,)


def source_sha256(cls: type) -> str:
    """SHA-256 over the Python sources of the top-level package (or single module) that defines `cls`: every
    `.py` file under it, by relative path, so that a change anywhere in a plugin's package changes it."""
    top = sys.modules[cls.__module__.split(".")[0]]
    digest = hashlib.sha256()
    if getattr(top, "__path__", None):
        root = Path(list(top.__path__)[0])
        files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    else:
        digest.update(Path(inspect.getfile(top)).read_bytes())
    return digest.hexdigest()


def plugin_identity(cls: type, distribution: str | None) -> dict[str, str]:
    """{distribution, version, source_sha256} of the plugin defining `cls` (distribution "unknown" for a module
    no installed distribution provides)."""
    name = distribution or "unknown"
    try:
        found = version(name) if distribution else "unknown"
    except PackageNotFoundError:
        found = "unknown"
    return {"distribution": name, "version": found, "module": cls.__module__, "source_sha256": source_sha256(cls)}


def _methods_in(module: ModuleType) -> list[type[Method]]:
    return [obj for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Method) and not inspect.isabstract(obj) and obj.__module__ == module.__name__
            and "info" in obj.__dict__]


def _add(registry: dict[str, Registered], entry: Registered) -> None:
    if entry.name in registry:
        raise HarnessError(f"method name {entry.name!r} is defined twice: by {registry[entry.name].source} and by "
                           f"{entry.source}; rename one of them")
    registry[entry.name] = entry


# Entry points that could not be registered, by entry-point name: why, in one line. `discover` warns once per
# process and leaves them out; `resolve_methods` refuses a run that names one.
BROKEN: dict[str, str] = {}


def check_method_class(cls: type, origin: str) -> None:
    """A registered class must be a concrete `Method` with a `MethodInfo` of a known kind and a dataclass `Config`
    (ValueError naming what is wrong otherwise)."""
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise ValueError(f"{origin} is not a harness.contract.Method subclass; point it at one")
    info = cls.__dict__.get("info")
    if not isinstance(info, MethodInfo):
        raise ValueError(f"{origin}: {cls.__name__}.info must be a harness.contract.MethodInfo")
    if info.kind not in get_args(MethodKind):
        raise ValueError(f"{origin}: kind {info.kind!r} of method {info.name!r} is not one of "
                         f"{', '.join(get_args(MethodKind))}")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise ValueError(f"{origin}: {cls.__name__}.Config must be a dataclass of the method's settings")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ValueError(f"{origin}: {cls.__name__} does not implement {missing}")


def discover() -> dict[str, Registered]:
    """Every available method by name; a duplicate name is an error naming both sources. A third-party entry point
    that fails to import or breaks the contract is left out with one warning line (`BROKEN`), so it stops only the
    runs that name it."""
    registry: dict[str, Registered] = {}
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{BUILTIN_PACKAGE}.{info.name}")
        for cls in _methods_in(module):
            _add(registry, Registered(cls, module.__name__, "oodbench"))
    for ep in plugin_entry_points():
        dist = getattr(ep, "dist", None)
        origin = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name})" if dist else "")
        try:
            loaded = ep.load()
        except Exception as err:  # noqa: BLE001  (a broken third-party plugin must not stop the others)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            _skip(ep.name, f"{origin} failed to import ({type(err).__name__}: {reason})")
            continue
        classes = _methods_in(loaded) if inspect.ismodule(loaded) else [loaded]
        try:
            for cls in classes:
                check_method_class(cls, origin)
        except ValueError as err:
            _skip(ep.name, str(err))
            continue
        for cls in classes:
            _add(registry, Registered(cls, origin, dist.name if dist else None))
    return registry


# The deprecated-group entry points already warned about in this process, by (distribution, name, value).
WARNED: set[tuple[str | None, str, str]] = set()


def _identity(ep: EntryPoint) -> tuple[str | None, str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name if dist else None, ep.name, ep.value)


def plugin_entry_points() -> list[EntryPoint]:
    """The entry points of `ENTRY_POINT_GROUP`, then those of `DEPRECATED_GROUP` that a plugin does not also
    declare under the new group, each announced once per process by one line naming the plugin and the fix."""
    current = list(entry_points(group=ENTRY_POINT_GROUP))
    declared = {_identity(ep) for ep in current}
    deprecated = [ep for ep in entry_points(group=DEPRECATED_GROUP) if _identity(ep) not in declared]
    for ep in deprecated:
        if _identity(ep) not in WARNED:
            WARNED.add(_identity(ep))
            owner = _identity(ep)[0] or ep.value
            print(f"warning: plugin {ep.name} ({owner}) registers under the deprecated entry-point group "
                  f"{DEPRECATED_GROUP!r}; rename it to [project.entry-points.\"{ENTRY_POINT_GROUP}\"] in its "
                  "pyproject.toml", file=sys.stderr)
    return current + deprecated


def _skip(name: str, problem: str) -> None:
    """Leave the entry point `name` out, in `BROKEN`, with one warning line the first time in this process."""
    if name not in BROKEN:
        print(f"warning: plugin skipped: {problem}; fix or uninstall that package", file=sys.stderr)
    BROKEN[name] = problem


def resolve_methods(names: list[str], registry: dict[str, Registered]) -> list[type[Method]]:
    if not names:
        raise HarnessError(f"no methods given; pass --methods with one or more of: {', '.join(sorted(registry))}")
    broken = [n for n in names if n not in registry and n in BROKEN]
    if broken:
        raise HarnessError(f"method {broken[0]!r} cannot run: {BROKEN[broken[0]]}; fix or uninstall that package")
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise HarnessError(f"unknown method {unknown[0]!r}; available methods: {', '.join(sorted(registry))}")
    return [registry[n].cls for n in names]


def protocol_settings(cls: type[Method], benchmark: str, protocol: str) -> dict[str, Any]:
    """The fields `protocol` sets for `cls` on `benchmark`: nothing for `paper`, the official code's departures
    (`Method.reference_settings`, "*" then the benchmark's own entry) for `reference`."""
    if protocol != "reference":
        return {}
    return {**cls.reference_settings.get("*", {}), **cls.reference_settings.get(benchmark, {})}


def smoke_settings(cls: type[Method], benchmark: str) -> dict[str, Any]:
    """The settings that shrink a run of `cls` on `benchmark` to seconds (`Method.smoke_settings`, "*" then the
    benchmark's own entry), for smoke tests of whether it completes."""
    return {**cls.smoke_settings.get("*", {}), **cls.smoke_settings.get(benchmark, {})}


def configure(cls: type[Method], benchmark: str, overrides: dict[str, Any]) -> tuple[Any, Any]:
    """(config, defaults): the method's config — paper defaults, then its per-benchmark defaults, then the settings
    of the chosen `protocol` (for methods that have the field), then the user's overrides — and the defaults it is
    compared with for its run label: those of the same protocol, so a reference run is labelled
    `protocol=reference` plus only what the user changed on top."""
    base = dict(cls.benchmark_defaults.get(benchmark, {}))
    overrides = current_names(cls.Config, overrides, cls.info.name)  # before the protocol's settings merge in
    if "protocol" in {f.name for f in config_fields(cls.Config)}:  # an unknown protocol fails in build_config
        protocol = str(overrides.get("protocol", base.get("protocol", "paper")))
        base = {**base, **protocol_settings(cls, benchmark, protocol), "protocol": protocol}
    return (build_config(cls.Config, {**base, **overrides}, cls.info.name),
            build_config(cls.Config, base, cls.info.name))


def method_config(cls: type[Method], benchmark: str, overrides: dict[str, Any]) -> Any:
    """The method's config (see `configure`)."""
    return configure(cls, benchmark, overrides)[0]
