"""What every benchmark result states: the machine it ran on, and the results file itself.

Shared by the benchmarks in this folder, so their JSON files describe the machine alike and are
written alike (indented, lists of numbers on one line, replaced atomically).
"""

from __future__ import annotations

import json
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

BASE_PACKAGES = ("deltalake", "pyarrow", "lakesink")


def machine(*, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Cores, memory, CPU model, platform, and the versions of deltalake, pyarrow, lakesink and `packages`.

    Versions come from the installed distributions' metadata, so describing the machine imports nothing.
    """
    versions = {}
    for name in (*BASE_PACKAGES, *packages):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **versions,
        # Other work on the machine shows up as noise (moto and the client share the cores).
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def describe(m: dict[str, Any], *, packages: tuple[str, ...] = ()) -> str:
    """One line for a chart or a table caption: cores, memory, CPU, Python and the package versions."""
    names = (*BASE_PACKAGES, *packages)
    versions = ", ".join(f"{name} {m[name]}" for name in names if m.get(name))
    cpu = f" ({m['cpu']})" if m.get("cpu") else ""
    return f"{m['cores']} cores{cpu}, {m['memory_gib']} GiB, Python {m['python']}, {versions}"


def compact_json(value: Any) -> str:
    """Indented JSON with every list of numbers on one line (the per-commit or per-run series)."""
    text = json.dumps(value, indent=1)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + ",".join(m[1].split()).replace(",,", ",") + "]", text)


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write `result` to `path` as compact JSON; readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(compact_json(result) + "\n")
    tmp.replace(path)


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
