"""Writes benchmark results as JSON plus a markdown table, and rebuilds docs/BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "BENCHMARKS.md"


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))])


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(name: str, data: dict[str, Any], markdown: str) -> None:
    """Saves results/NAME.json and results/NAME.md, then regenerates docs/BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    m = data["machine"]
    header = (f"_Measured {m['date']} on {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
              f"commit {m['commit']}. Raw numbers: `benchmarks/results/{name}.json`._\n\n")
    (RESULTS / f"{name}.md").write_text(header + markdown.strip() + "\n")
    rebuild_doc()


def rebuild_doc() -> None:
    parts = [
        "# Benchmarks\n",
        "Every number here is written by a script in `benchmarks/` (see its README for how to run them).",
        "Medians and ratios are from one run on the machine named in each section; these machines are",
        "noisy, so compare runs on the same machine only.\n",
    ]
    for md in sorted(RESULTS.glob("*.md")):
        parts.append(md.read_text())
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(parts))
