"""The plugins: ``plugins`` (list, ``check NAME``, ``path``) and ``new-plugin`` (a package to
start from)."""

from __future__ import annotations

import sys

from transferstudio.cli.common import UsageError, load_host


def cmd_plugins(args) -> int:
    if args.action == "check":
        return _check_plugin(args)
    if args.action == "path":
        return _plugin_path()
    host = load_host()
    for record in host.records:
        print(
            f"{record.name} {record.version}  [{record.status}]  module {record.module}, "
            f"API {record.api_version or '?'}"
        )
        for kind, names in record.provides.items():
            print(f"  {kind}: {', '.join(names)}")
        for error in record.errors:
            text = error if args.verbose else error.split("\n")[0]
            print("  error: " + text.replace("\n", "\n    "))
    failed = host.failures()
    if failed and not args.verbose:
        print(
            f"\n{len(failed)} plugin(s) with problems; 'transferstudio plugins -v' shows tracebacks"
        )
    return 0


def _plugin_path() -> int:
    from transferstudio.core.plugins.host import PLUGIN_PATH_ENV, plugin_folders

    folders = plugin_folders()
    for folder in folders:
        print(folder)
    if not folders:
        print(
            f"(none: plugins are found in this Python environment; {PLUGIN_PATH_ENV} adds folders)",
            file=sys.stderr,
        )
    else:
        print(
            f"install a plugin into a folder with: python{sys.version_info[0]}."
            f"{sys.version_info[1]} -m pip install --target {folders[-1]} PLUGIN "
            "(see docs/installing.md)",
            file=sys.stderr,
        )
    return 0


def _check_plugin(args) -> int:
    import tomllib

    from transferstudio.testing import check_plugin
    from transferstudio.testing.conformance import param_problems

    if not args.name:
        raise UsageError(
            "plugins check needs the plugin's name, as 'transferstudio plugins' lists it"
        )
    host = load_host()
    record = next(
        (r for r in host.records if args.name in (r.name, r.name.split(":")[0], r.module)), None
    )
    if record is None:
        names = ", ".join(r.name for r in host.records)
        raise UsageError(f"no installed plugin named {args.name!r}; installed: {names}")
    params: dict[str, dict] = {}
    for item in args.param:
        key, sep, text = item.partition("=")
        method, dot, field = key.partition(".")
        if not (sep and dot and field):
            raise UsageError(f"--param {item!r}: write METHOD.KEY=VALUE, e.g. distill.alpha=0.5")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: a string
        params.setdefault(method, {})[field] = value
    if record.status in ("failed", "refused"):
        print(f"{record.name} {record.version}: {record.status}")
        for error in record.errors:
            print("  " + error.replace("\n", "\n  "))
        return 1
    # A --param the user got wrong is their error, not a check to skip: name it and its range.
    methods = {name: host.methods[name] for name in record.provides.get("methods", [])}
    problems = [problem for _method, problem in param_problems(methods, params)]
    if problems:
        raise UsageError("--param " + "; --param ".join(problems))
    plugin = host.pm.get_plugin(record.name)  # the object the host loaded: no second import
    print(f"checking {record.name} {record.version} ({record.module}) ...", flush=True)
    # conflicts (a name another installed plugin provides first) fail the check too
    report = check_plugin(plugin, params, conflicts=record.conflicts)
    print(report.text())
    return 0 if report.ok else 1


def cmd_new_plugin(args) -> int:
    from transferstudio.scaffold import new_plugin

    folder = new_plugin(args.name, args.kind, args.directory)
    print(f"wrote {folder}")
    print(f"next: cd {folder} && pip install -e . && pytest")
    return 0
