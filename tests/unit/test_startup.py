"""Start-up (issue 15): `import lakesink` and the CLI's --version/--help import nothing heavy, and the
lazily loaded names and commands are the same as the eager ones were. Structural checks, no timings
(benchmarks/startup.py measures those)."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import subprocess
import sys
import textwrap
from typing import Any

import click
import pytest
from click.testing import CliRunner

import lakesink
from lakesink.cli.app import COMMANDS, main

HEAVY = ("pyarrow", "deltalake", "numpy", "polars", "pandas", "boto3", "psycopg2", "prometheus_client", "rich", "ray")

_CLI = """
import json, sys
sys.argv = ["lakesink", *json.loads(sys.argv[1])]
from lakesink.cli import main
try:
    main()
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(sys.modules)))
"""


def modules_after(code: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code` (which prints them last, as JSON)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded_heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["ingest", "--help"], *([name, "--help"] for name in sorted(COMMANDS) if name != "ingest")],
    ids=lambda argv: " ".join(argv),
)
def test_cli_help_and_version_import_nothing_heavy(argv: list[str]) -> None:
    modules = modules_after(_CLI, json.dumps(argv))
    assert loaded_heavy(modules) == []
    if argv[0] == "--help":  # the listing imports no command module
        assert not {f"lakesink.cli.{m}" for m in ("ingest", "cdc", "tables")} & modules


def test_import_lakesink_imports_nothing_heavy() -> None:
    modules = modules_after("import json, sys, lakesink; lakesink.__version__; print(json.dumps(sorted(sys.modules)))")
    assert loaded_heavy(modules) == []
    assert not {m for m in modules if m.startswith("lakesink.") and m != "lakesink._version"}


def test_ingest_command_loads_only_what_it_needs() -> None:
    """Resolving `ingest` (as running it does) brings no CDC, maintenance or watch module, nor their libraries."""
    code = """
    import json, sys
    from lakesink.cli.app import main
    import click
    command = main.get_command(click.Context(main), "ingest")
    command.callback.__globals__["_ingest_once"].__code__  # resolved, not run
    from lakesink.ingest.run import ingest
    print(json.dumps(sorted(sys.modules)))
    """
    modules = modules_after(code)
    unwanted = {"lakesink.ingest.cdc", "lakesink.ingest.watch", "lakesink.cli.cdc", "lakesink.cli.tables"}
    unwanted |= {m for m in modules if m.startswith("lakesink.maintenance.")}
    assert not unwanted & modules
    assert [m for m in ("polars", "pandas", "boto3", "psycopg2", "prometheus_client", "rich") if m in modules] == []


def test_every_public_name_is_there() -> None:
    code = """
    import json, sys
    import lakesink
    import lakesink.ingest.report  # binds the subpackage lakesink.ingest on the package, unless guarded
    names = {}
    for name in lakesink.__all__:
        value = getattr(lakesink, name)
        names[name] = getattr(value, "__module__", None) or type(value).__name__
    exec("from lakesink import " + ", ".join(lakesink.__all__))
    print(json.dumps({"names": names, "dir": dir(lakesink), "ingest": repr(lakesink.ingest)}))
    print(json.dumps(sorted(sys.modules)))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-2])
    assert set(found["names"]) == set(lakesink.__all__)
    assert set(lakesink.__all__) <= set(found["dir"])
    assert found["ingest"].startswith("<function ingest")
    for name in lakesink.__all__:
        if name != "__version__":
            assert found["names"][name].startswith("lakesink."), (name, found["names"][name])


def test_names_resolve_in_process() -> None:
    for name in lakesink.__all__:
        assert getattr(lakesink, name) is not None
    assert callable(lakesink.ingest)
    assert lakesink.Sink.__name__ == "Sink"
    assert lakesink.__version__ == importlib.metadata.version("lakesink")
    with pytest.raises(AttributeError):
        lakesink.NoSuchName  # noqa: B018
    assert not hasattr(lakesink, "no_such_name")


def test_command_table_matches_the_commands() -> None:
    """COMMANDS names each command's module and the first paragraph of its help, as `lakesink --help` shows it."""
    for name, (target, summary) in COMMANDS.items():
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        assert command.name == name
        assert inspect.cleandoc(command.help or "").split("\n\n")[0] == summary


def test_help_listing_is_clicks_own() -> None:
    """The listing from COMMANDS (no command loaded) is what click prints from the loaded commands."""
    same: dict[str, Any] = {"callback": main.callback, "params": main.params, "help": main.help}
    same["context_settings"] = main.context_settings
    lazy = type(main)("lakesink", **same)
    eager = click.Group("lakesink", **same)
    for name in COMMANDS:
        command = main.get_command(click.Context(main), name)
        assert command is not None
        eager.add_command(command)
    for width in (60, 100, 200):
        listing = CliRunner().invoke(lazy, ["--help"], prog_name="lakesink", terminal_width=width)
        assert not lazy.commands  # nothing was loaded for the listing
        own = CliRunner().invoke(eager, ["--help"], prog_name="lakesink", terminal_width=width)
        assert listing.exit_code == own.exit_code == 0
        assert "Commands:" in listing.output and all(f"  {name} " in listing.output for name in COMMANDS)
        assert listing.output == own.output


def test_version_output() -> None:
    result = CliRunner().invoke(main, ["--version"], prog_name="lakesink")
    assert result.exit_code == 0
    assert result.output == f"lakesink, version {importlib.metadata.version('lakesink')}\n"


def test_ingest_option_defaults_are_configs() -> None:
    """`ingest`'s option defaults are lakesink.config's (which imports no pyarrow until a schema is parsed)."""
    from lakesink import config

    command = main.get_command(click.Context(main), "ingest")
    assert command is not None
    defaults = {p.name: p.default for p in command.params}
    assert defaults["write_threads"] == config.DEFAULT_WRITE_THREADS
    assert defaults["max_record_bytes"] == config.DEFAULT_MAX_RECORD_BYTES
