"""The plugin host: guarded loading of entry-point plugins and guarded hook calls.

Pluggy does not isolate failures: one raising implementation aborts a whole hook call. The host
therefore loads each entry point itself, checks its declared API version, and calls every
registration hook once per implementation, recording any failure (plugin name, version, error,
traceback) and carrying on with the others.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import threading
import traceback
import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from transferstudio import hookspecs
from transferstudio.api import (
    API_VERSION,
    PROJECT_NAME,
    BackboneSpec,
    DatasetSpec,
    ExperimentError,
    ExporterSpec,
    MethodSpec,
    is_compatible,
)
from transferstudio.core.plugins.spec_checks import check_spec

ENTRY_POINT_GROUP = PROJECT_NAME
BUILTIN_MODULE = "transferstudio_builtins"
DISABLE_AUTOLOAD_ENV = "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD"
PLUGIN_PATH_ENV = "TRANSFERSTUDIO_PLUGIN_PATH"
TIMEOUT_ENV = "TRANSFERSTUDIO_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT_S = 20.0
"""How long one registration hook may take before it is given up (seconds); hooks only build
lightweight specs, so anything near this is a hang. Imports are not time-boxed: a module must
be imported on the main thread (signal handlers, torch's own import), and an import abandoned
in a thread would keep its import lock. An import still running after this long is named on
stderr instead, with how to start without it."""


def _timeout_from_env() -> float:
    """``TRANSFERSTUDIO_PLUGIN_TIMEOUT`` in seconds (at least 1); a malformed value must not
    stop the app, so it falls back to the default."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return max(1.0, value) if value == value else DEFAULT_TIMEOUT_S  # NaN fails value == value


@contextmanager
def _watch_import(record: PluginRecord, timeout: float) -> Iterator[None]:
    """Name the plugin on stderr if its import is still running after ``timeout`` seconds: the
    app's start waits for it, and without a name the user sees only a program that never
    opens."""
    dist = record.name.split(":")[0]

    def warn() -> None:
        print(
            f"transferstudio: still importing plugin {dist!r} (module {record.module}) after "
            f"{timeout:g} s; the start waits for it. If it hangs, start without installed "
            f"plugins ({DISABLE_AUTOLOAD_ENV}=1) or remove it (pip uninstall {dist}).",
            file=sys.stderr,
            flush=True,
        )

    timer = threading.Timer(timeout, warn)
    timer.daemon = True  # a hung import must not also keep the process from exiting
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class PluginTimeout(Exception):
    """A plugin's import or hook did not return in time."""


def _time_boxed(call, timeout: float):
    """``call()`` in a daemon thread, waited for at most ``timeout`` seconds. A hung call is
    abandoned (Python cannot kill a thread; being a daemon it does not keep the app alive at
    exit) and reported as :class:`PluginTimeout`; its exception otherwise propagates."""
    outcome: dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="plugin-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise PluginTimeout(f"did not return within {timeout:g} s (it may hang); skipped")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# hook name -> (kind label, spec class, attribute naming a spec)
HOOKS: dict[str, tuple[str, type, str]] = {
    "transferstudio_backbones": ("backbones", BackboneSpec, "name"),
    "transferstudio_methods": ("methods", MethodSpec, "name"),
    "transferstudio_exporters": ("exporters", ExporterSpec, "format"),
    "transferstudio_datasets": ("datasets", DatasetSpec, "name"),
}


@dataclass
class PluginRecord:
    """What the host knows about one plugin: where it came from, what it gave, what went wrong."""

    name: str
    version: str
    module: str
    api_version: str | None = None
    status: str = "ok"  # ok | failed | refused | partial
    provides: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    """The errors (also in ``errors``) that come from other plugins: a spec name another
    plugin provides first. The test kit, which checks a plugin on its own, reports these too."""

    def fail(self, status: str, message: str) -> None:
        self.status = status
        self.errors.append(message)


class PluginHost:
    """Loads plugins and collects their specs. Build one with :func:`load_plugins`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.backbones: dict[str, BackboneSpec] = {}
        self.methods: dict[str, MethodSpec] = {}
        self.exporters: dict[str, ExporterSpec] = {}
        self.datasets: dict[str, DatasetSpec] = {}
        self.providers: dict[tuple[str, str], str] = {}
        """``(kind, name) -> plugin name`` of every registered spec (to name both plugins of a
        duplicate)."""
        self.rejected: dict[tuple[str, str], str] = {}
        """``(kind, name) -> why`` for specs a plugin offered that were not registered, so a
        lookup of that name says why it is missing."""
        self.timeout = _timeout_from_env()

    # ----------------------------------------------------------------- loading

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every plugin registered under the entry-point group, each guarded."""
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            name = dist.name if dist is not None else ep.name
            version = dist.version if dist is not None else "?"
            record = PluginRecord(
                name=f"{name}:{ep.name}" if ep.name != "builtins" else name,
                version=version,
                module=ep.value,
            )
            try:
                with _watch_import(record, self.timeout):
                    module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a broken plugin must not stop the app
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record.fail("failed", _format_exc(f"could not import {ep.value!r}", exc))
                self.records.append(record)
                continue
            self.register(module, record)

    def load_module(
        self, module_name: str, version: str | None = None, name: str | None = None
    ) -> None:
        """Import a plugin module by name and register it, guarded like an entry point."""
        record = PluginRecord(name=name or module_name, version=version or "?", module=module_name)
        try:
            with _watch_import(record, self.timeout):
                module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            record.fail("failed", _format_exc(f"could not import {module_name!r}", exc))
            self.records.append(record)
            return
        if version is None:
            record.version = str(getattr(module, "__version__", "?"))
        self.register(module, record)

    def register(self, plugin: Any, record: PluginRecord | None = None) -> PluginRecord:
        """Register a plugin object (module or instance) after checking its API version, then
        collect its specs hook by hook. Returns its record (also kept in ``records``)."""
        name = getattr(plugin, "__name__", type(plugin).__name__)
        record = record or PluginRecord(
            name=name, version=str(getattr(plugin, "__version__", "?")), module=name
        )
        self.records.append(record)
        declared = getattr(plugin, "TRANSFERSTUDIO_API_VERSION", None)
        record.api_version = declared
        if declared is None:
            record.fail(
                "refused",
                f"{record.name} does not declare TRANSFERSTUDIO_API_VERSION; "
                f'add TRANSFERSTUDIO_API_VERSION = "{API_VERSION}" to the plugin module',
            )
            return record
        if not is_compatible(str(declared)):
            record.fail("refused", _version_refusal(record.name, str(declared)))
            return record
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:  # noqa: BLE001 - e.g. a misspelled hook name
            record.fail("failed", _format_exc(f"{record.name} could not be registered", exc))
            return record
        for hook_name in HOOKS:
            if not self._collect(hook_name, plugin, record):
                break  # a hook hung: the plugin's other hooks are not waited for
        if record.errors and record.status == "ok":
            # "partial": some specs work; "failed": nothing the plugin offered can be used.
            record.status = "partial" if record.provides else "failed"
        return record

    def _collect(self, hook_name: str, plugin: Any, record: PluginRecord) -> bool:
        """Register the specs one hook of ``plugin`` returns; False when the hook hung."""
        kind, spec_cls, key_attr = HOOKS[hook_name]
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                specs = _time_boxed(impl.function, self.timeout)
            except PluginTimeout as exc:
                record.errors.append(f"{record.name}: {hook_name} {exc}")
                return False
            except Exception as exc:  # noqa: BLE001
                record.errors.append(_format_exc(f"{record.name} raised in {hook_name}", exc))
                continue
            # A dict or a string is iterable too, and iterating it would report its keys or
            # characters ("returned str"): only a sequence of specs is a list of specs.
            if not isinstance(specs, Iterable) or isinstance(specs, str | bytes | Mapping):
                record.errors.append(
                    f"{record.name}: {hook_name} must return a list of "
                    f"{spec_cls.__name__}, got {type(specs).__name__}"
                )
                continue
            try:
                specs = list(specs)  # a generator runs the plugin's code only now
            except Exception as exc:  # noqa: BLE001
                record.errors.append(_format_exc(f"{record.name} raised in {hook_name}", exc))
                continue
            for spec in specs:
                self._add_spec(spec, kind, spec_cls, key_attr, hook_name, record)
        return True

    def _add_spec(
        self, spec: Any, kind: str, spec_cls: type, key_attr: str, hook: str, record: PluginRecord
    ) -> None:
        """Register one spec after checking its declaration; a bad or duplicate one is reported
        on the plugin's record (naming plugin, spec and field) and left out."""
        registry: dict[str, Any] = getattr(self, kind)
        what = kind[:-1]  # "backbone", "method", ...
        if not isinstance(spec, spec_cls):
            record.errors.append(
                f"{record.name}: {hook} returned {type(spec).__name__}, expected {spec_cls.__name__}"
            )
            return
        key = getattr(spec, key_attr)
        problems = check_spec(spec)
        if problems:
            message = (
                f"{record.name}: {what} {key!r} is not registered: "
                + "; ".join(problems)
                + f". Fix its {spec_cls.__name__} in the plugin ({record.module})"
            )
            record.errors.append(message)
            if isinstance(key, str):
                self.rejected.setdefault((kind, key), message)
            return
        if key in registry:
            first = self.providers.get((kind, key), "another plugin")
            message = (
                f"{record.name}: {what} {key!r} is also provided by {first}, which was loaded "
                f"first; {record.name}'s is ignored. Uninstall one of the two plugins, or rename "
                f"the {what} in one of them"
            )
            record.errors.append(message)
            record.conflicts.append(message)
            return
        registry[key] = spec
        self.providers[(kind, key)] = record.name
        record.provides.setdefault(kind, []).append(key)
        return True

    # ----------------------------------------------------------------- lookup

    def _get(self, kind: str, name: str, key: str) -> Any:
        registry: dict[str, Any] = getattr(self, kind)
        if name not in registry:
            why = self.rejected.get((kind, name))
            if why is not None:
                raise ExperimentError(why.split("\n")[0], key)
            import difflib

            known = ", ".join(sorted(registry)) or "none loaded"
            close = difflib.get_close_matches(str(name), list(registry), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ExperimentError(
                f"no {kind[:-1]} plugin named {name!r}{hint}; available: {known}. "
                "Run 'transferstudio plugins' to see what is installed and why "
                "a plugin may have failed",
                key,
            )
        return registry[name]

    def backbone(self, name: str) -> BackboneSpec:
        return self._get("backbones", name, "model.backbone")

    def method(self, name: str) -> MethodSpec:
        return self._get("methods", name, "method.name")

    def dataset(self, name: str) -> DatasetSpec:
        return self._get("datasets", name, "data.source")

    def method_params(self, name: str) -> type:
        """The parameter dataclass of a method id (for experiment validation)."""
        return self.method(name).params

    def plugin_in_traceback(self, tb: types.TracebackType | None) -> str | None:
        """``"name version"`` of the loaded plugin whose code is innermost in a traceback (the
        plugin that raised, or called the library that did); ``None`` when no plugin's code
        is in it."""
        frames = []
        while tb is not None:
            frames.append(tb.tb_frame.f_globals.get("__name__", ""))
            tb = tb.tb_next
        for module in reversed(frames):
            for record in self.records:
                package = record.module.split(":")[0]  # an entry point may name an attribute
                if package and (module == package or module.startswith(package + ".")):
                    return f"{record.name} {record.version}"
        return None

    def plugin_versions(self) -> dict[str, str]:
        """Versions of every loaded plugin, for provenance."""
        return {r.name: r.version for r in self.records if r.status in ("ok", "partial")}

    def failures(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status != "ok"]


def _version_refusal(plugin: str, declared: str) -> str:
    """Why a plugin's declared API version is refused, naming both versions and what to do."""
    host_major = API_VERSION.split(".")[0]
    if declared.split(".")[0] == host_major:  # same major, newer minor
        return (
            f"{plugin} needs plugin API {declared}, newer than this TransferStudio's API "
            f"{API_VERSION}: upgrade TransferStudio, or install an older version of the plugin"
        )
    return (
        f"{plugin} was written for plugin API {declared}; this TransferStudio provides API "
        f"{API_VERSION}. Install a version of the plugin made for API {host_major}.x"
    )


def _format_exc(summary: str, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{summary}: {type(exc).__name__}: {exc}\n{tb}"


def plugin_folders() -> list[Path]:
    """Folders searched for plugins besides the Python environment: those in
    ``TRANSFERSTUDIO_PLUGIN_PATH`` (os.pathsep-separated) and, in the installed application
    (a frozen build, which has no pip of its own), the user's plugin folder. A plugin is
    installed there with any pip of the same Python version: ``pip install --target FOLDER``."""
    folders = [Path(p).expanduser() for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep)]
    folders = [f for f in folders if str(f) not in ("", ".")]
    if getattr(sys, "frozen", False):
        from platformdirs import user_data_dir

        folders.append(Path(user_data_dir("TransferStudio", appauthor=False)) / "plugins")
    return folders


def _add_plugin_folders() -> None:
    # Appended, not prepended: a plugin folder that also received torch or numpy (pip without
    # --no-deps) must not replace the application's own copies.
    for folder in plugin_folders():
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.append(str(folder))


def load_plugins(autoload: bool | None = None, extra: Iterable[Any] = ()) -> PluginHost:
    """A host with the built-ins and, unless disabled, every installed plugin (in the Python
    environment and in :func:`plugin_folders`).

    ``autoload=None`` reads ``TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD`` (``1`` loads built-ins
    only). ``extra`` plugin objects are registered after the others (used by tests).
    """
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes")
    host = PluginHost()
    if autoload:
        _add_plugin_folders()
        host.load_entry_points()
    if not any(r.module == BUILTIN_MODULE for r in host.records):
        host.load_module(BUILTIN_MODULE, version=_dist_version(), name=PROJECT_NAME)
    for plugin in extra:
        host.register(plugin)
    return host


def _dist_version() -> str:
    try:
        return md.version(PROJECT_NAME)
    except md.PackageNotFoundError:  # running from a source tree
        from transferstudio import __version__

        return __version__


def plugin_from_namespace(
    name: str, api_version: str = API_VERSION, **hooks: Any
) -> types.ModuleType:
    """A module-like plugin object built from hook functions (handy in tests and scripts)."""
    module = types.ModuleType(name)
    module.TRANSFERSTUDIO_API_VERSION = api_version  # type: ignore[attr-defined]
    for hook_name, fn in hooks.items():
        from transferstudio.api import hookimpl

        setattr(module, hook_name, hookimpl(fn))
    return module
