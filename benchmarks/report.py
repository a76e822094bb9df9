"""Run the benchmarks once and rewrite docs/benchmarks.md from that one run.

::

    python benchmarks/report.py                # runs pytest benchmarks --benchmark-only, then writes
    python benchmarks/report.py --json run.json   # writes from a saved pytest-benchmark JSON
    python benchmarks/report.py --callgrind-only  # counts anew; rewrites only the callgrind parts
    python benchmarks/report.py --callgrind-only --callgrind cg.json   # from a saved bench_callgrind run

Tables are generated; hand-written text between ``<!-- prose KEY -->`` and
``<!-- /prose -->`` is kept and put back after the section named ``KEY``
(blocks whose key is no section go to the end, never lost).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import report_callgrind
from report_layout import BARE, BASELINES, GOALS, INTERLEAVED_ORDER, LABELS, PEERS, SECTIONS, SHORT, Goal

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks.md"
PROSE = re.compile(r"<!-- prose (?P<key>[\w-]+) -->\n(?P<body>.*?)<!-- /prose -->\n?", re.S)
PER = re.compile(r"\((?P<n>[\d,]+) (?:calls|requests|records)\)")
NOISY = 0.1
"""Cores used by other processes during the run above which the report warns."""
Entry = dict[str, Any]


def run_benchmarks(json_path: Path) -> float | None:
    """``pytest benchmarks --benchmark-only`` into ``json_path``; exits on failure.

    Returns:
        The CPU that *other* processes used meanwhile, in cores on average
        (from /proc/stat less this run's own CPU time), or ``None`` off Linux.
    """
    command = [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "-p", "no:randomly", "-q",
               f"--benchmark-json={json_path}"]
    before = _cpu_times()
    result = subprocess.run(command, cwd=ROOT, check=False)
    after = _cpu_times()
    if result.returncode != 0:
        sys.exit(f"benchmarks failed (exit {result.returncode}); {OUT.relative_to(ROOT)} left as it was")
    if before is None or after is None:
        return None
    busy, ours, wall = (b - a for a, b in zip(before, after, strict=True))
    return max(busy - ours, 0.0) / wall if wall > 0 else None


def _cpu_times() -> tuple[float, float, float] | None:
    """Busy CPU seconds of the whole machine, CPU seconds of finished children, and wall time."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime, time.monotonic()


def fmt_time(seconds: float) -> str:
    """A duration with a unit a reader takes in at a glance."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def per_op(group: str) -> int:
    """How many operations one round of ``group`` does (from its name), else 1."""
    match = PER.search(group)
    return int(match["n"].replace(",", "")) if match else 1


def key(entry: Entry) -> str:
    """What an entry is called in LABELS and GOALS: its ``peer`` or its test name."""
    return str(entry["extra_info"].get("peer") or entry["name"])


def label(group: str, entry: Entry) -> str:
    """The readable name of an entry."""
    return LABELS.get((group, key(entry))) or LABELS.get(("*", key(entry))) or f"`{entry['name']}`"


def by_group(data: dict[str, Any]) -> dict[str, list[Entry]]:
    """Entries per group, fastest first."""
    groups: dict[str, list[Entry]] = {}
    for entry in data["benchmarks"]:
        groups.setdefault(entry["group"] or entry["name"], []).append(entry)
    return {g: sorted(es, key=lambda e: e["stats"]["min"]) for g, es in groups.items()}


def find(groups: dict[str, list[Entry]], group: str, name: str) -> Entry | None:
    """The entry called ``name`` in ``group``."""
    return next((e for e in groups.get(group, []) if key(e) == name), None)


def _first(entries: list[Entry], names: tuple[str, ...]) -> Entry | None:
    return next((e for name in names for e in entries if key(e) == name), None)


def time_table(group: str, entries: list[Entry], kind: str = "time") -> list[str]:
    """Per-operation min and median, the ratio to the group's baseline (or throughput), the cost over bare."""
    n = per_op(group)
    base, bare = _first(entries, BARE if kind == "throughput" else BASELINES), _first(entries, BARE)
    head = f"| {group} | min | median |"
    if base is not None:
        name = SHORT.get(key(base), key(base))
        head += " throughput vs bare |" if kind == "throughput" else f" × {name} |"
    over = bare is not None and kind == "time" and n > 1 and base is not bare
    head += " over bare |" if over else ""
    lines = [head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
    for e in entries:
        stats, ours = e["stats"], key(e) == "resilience" or key(e).startswith("test_guard")
        row = f"| {label(group, e)} | {fmt_time(stats['min'] / n)} | {fmt_time(stats['median'] / n)} |"
        if base is not None:
            ratio = (base["stats"]["min"] / stats["min"] if kind == "throughput"
                     else stats["min"] / base["stats"]["min"])
            row += f" {'**' if ours else ''}{ratio:.2f}×{'**' if ours else ''} |"
        if over:
            assert bare is not None
            extra = (stats["min"] - bare["stats"]["min"]) / n
            row += f" {'—' if e is bare else '+' + fmt_time(max(extra, 0.0))} |"
        lines.append(row)
    return lines


def half_open_table(group: str, entries: list[Entry]) -> list[str]:
    """Calls that reached a still-failing provider, and how callers were turned away."""
    lines = [f"| {group} | reached the provider | turned away | slowest turn-away | round |",
             "|---|---:|---:|---:|---:|"]
    for e in sorted(entries, key=lambda e: (e["extra_info"].get("reached", 0), e["stats"]["min"])):
        info = e["extra_info"]
        wait = f"{info.get('rejected_wait_ms', 0):.2g} ms" if info.get("rejected") else "—"
        lines.append(f"| {label(group, e)} | {info.get('reached')} of {info.get('callers')} | "
                     f"{info.get('rejected')} | {wait} | {fmt_time(e['stats']['min'])} |")
    return lines


def interleaved_table(group: str, entries: list[Entry]) -> list[str]:
    """ResilientTransport rounds beside the bare rounds interleaved with them: minimums and their ratio."""
    n = per_op(group)
    lines = [f"| {group} | resilience min | bare min (same rounds) | × bare | over bare |",
             "|---|---:|---:|---:|---:|"]
    order = INTERLEAVED_ORDER
    for e in sorted(entries, key=lambda e: order.index(key(e)) if key(e) in order else len(order)):
        ours, bare = e["stats"]["min"], e["extra_info"]["bare_min"]
        lines.append(f"| {label(group, e)} | {fmt_time(ours / n)} | {fmt_time(bare / n)} | "
                     f"**{ours / bare:.3f}×** | +{fmt_time(max(ours - bare, 0.0) / n)} |")
    return lines


def goal_rows(groups: dict[str, list[Entry]]) -> list[str]:
    """Each goal of issues 2, 3, 4 and 6, measured in this run, marked met or not met."""
    lines = ["| goal | measured | target | |", "|---|---:|---:|---|"]
    for goal in GOALS:
        value = measure(groups, goal)
        if value is None:
            lines.append(f"| {goal.title} | not in this run | {goal.target_text} | — |")
            continue
        met = value <= goal.target if goal.at_most else value >= goal.target
        shown = fmt_time(value) if goal.unit == "s" else f"{value:.3f}×" if goal.unit == "interleaved" \
            else f"{value:.2f}×"
        lines.append(f"| {goal.title} | {shown} | {goal.target_text} | {'met' if met else '**not met**'} |")
    return lines


def measure(groups: dict[str, list[Entry]], goal: Goal) -> float | None:
    """The goal's number: a ratio of two entries' minimums, or one minimum (less another)."""
    ours = find(groups, goal.group, goal.ours)
    other = find(groups, goal.group, goal.other) if goal.other else None
    if ours is None or (goal.other and other is None):
        return None
    if goal.unit == "s":
        return float(ours["stats"]["min"] - (other["stats"]["min"] if other else 0.0))
    if goal.unit == "interleaved":
        ratio = float(ours["stats"]["min"] / ours["extra_info"]["bare_min"])
        return 1 / ratio if goal.throughput else ratio
    assert other is not None
    if goal.throughput:
        return float(other["stats"]["min"] / ours["stats"]["min"])
    return float(ours["stats"]["min"] / other["stats"]["min"])


def machine(data: dict[str, Any], others: float | None = None) -> str:
    """Cores, CPU model, Python and OS of the run; when, at which commit, and how busy the machine was."""
    info = data["machine_info"]
    cpu = info.get("cpu", {})
    cores = cpu.get("count") or "?"
    model = cpu.get("brand_raw") or _proc_cpu_model()
    commit = data.get("commit_info", {})
    dirty = " (with uncommitted changes)" if commit.get("dirty") else ""
    versions = ", ".join(f"{name} {_version(name)}" for name in PEERS)
    return (f"**Machine:** {cores} cores, {model}, {info['python_implementation']} {info['python_version']}, "
            f"{info['system']} {info['release']}. **Run:** {data['datetime'][:16].replace('T', ' ')} UTC at "
            f"commit `{str(commit.get('id', '?'))[:7]}`{dirty}, pytest-benchmark {data['version']}. "
            f"**Peers:** {versions}." + (
                f" Other processes used {others:.2f} cores on average during the run." if others is not None
                else ""))


def _proc_cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match[1].strip() if match else "unknown CPU"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"


CALLGRIND_INTRO = (
    "Instructions per request counted by callgrind (`benchmarks/bench_callgrind.py`): the client "
    "process only, against a real uvicorn upstream on 127.0.0.1 in its own process, bare "
    "(`HTTPTransport`) and through `ResilientTransport` on the same stack, each count from a fresh "
    "process as (Ir(N) − Ir(0)) / N. Counts do not move with the machine's load, so these are the "
    "per-request goals. The `guard` rows are `registry.guard` beside each peer breaker's own call. "
    "`python benchmarks/report.py --callgrind-only` recounts these sections alone (about 10 minutes), "
    "leaving the rest of the page as it is."
)


CALLGRIND_TITLE = "Per-request instructions (callgrind, real upstream)"


def render(
    data: dict[str, Any],
    prose: dict[str, str],
    others: float | None = None,
    callgrind: list[dict[str, Any]] | None = None,
    otel: list[dict[str, Any]] | None = None,
    callgrind_info: dict[str, Any] | None = None,
) -> str:
    """The whole page (``others``: CPU other processes used during the run, in cores;
    ``callgrind``, ``otel``: :func:`bench_callgrind.measure_all`'s results as dicts;
    ``callgrind_info``: the rest of its JSON document, when and how it counted)."""
    groups = by_group(data)
    out = [
        "# Benchmarks", "",
        "<!-- Generated by benchmarks/report.py (`make bench`) from one run. Edit only the text between",
        "     the prose markers: it is kept when the tables are regenerated. -->", "",
        "Measured, not claimed: every ratio is against a baseline run in the **same process, same run**",
        "(pytest-benchmark groups), on the machine noted. Times are per operation: the minimum over all",
        "rounds of a benchmark, then the median. Reproduce with `make bench`.", "",
        machine(data, others), "", "## Goals", "", *goal_rows(groups),
        *callgrind_goal_rows(callgrind, otel), "",
        *callgrind_sections(callgrind, otel, prose, callgrind_info),
    ]
    shown: set[str] = set()
    for section in SECTIONS:
        present = [g for g in section.groups if g in groups]
        if not present and section.key not in prose:
            continue
        out += [f"## {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        for group in present:
            if section.kind == "half-open":
                out += [*half_open_table(group, groups[group]), ""]
            elif section.kind == "interleaved":
                out += [*interleaved_table(group, groups[group]), ""]
            else:
                out += [*time_table(group, groups[group], section.kind), ""]
            shown.add(group)
        out += _prose(section.key, prose)
    rest = [g for g in groups if g not in shown]
    if rest:
        out += ["## Other benchmarks", ""]
        for group in rest:
            out += [*time_table(group, groups[group]), ""]
    known = {s.key for s in SECTIONS} | _callgrind_prose(callgrind, otel)
    for name in prose:
        if name not in known:
            out += _prose(name, prose)
    return "\n".join(out).rstrip() + "\n"


def _callgrind_prose(callgrind: list[dict[str, Any]] | None, otel: list[dict[str, Any]] | None) -> set[str]:
    """The prose keys the callgrind sections put back (those of the sections there are results for)."""
    return {key for key, results in (("callgrind", callgrind), ("otel", otel)) if results}


def callgrind_goal_rows(
    callgrind: list[dict[str, Any]] | None, otel: list[dict[str, Any]] | None
) -> list[str]:
    """The goals-table rows the callgrind counts measure."""
    return [*report_callgrind.goal_rows(callgrind or []), *report_callgrind.otel_goal_rows(otel or [])]


def callgrind_sections(
    callgrind: list[dict[str, Any]] | None,
    otel: list[dict[str, Any]] | None,
    prose: dict[str, str],
    info: dict[str, Any] | None = None,
) -> list[str]:
    """The callgrind table's section and the OpenTelemetry one (each only when counted), prose kept."""
    out: list[str] = []
    counted = report_callgrind.run_line(info or {})
    if callgrind:
        out += [f"## {CALLGRIND_TITLE}", "", CALLGRIND_INTRO, "", *([counted, ""] if counted else []),
                *report_callgrind.table(callgrind), "", *_prose("callgrind", prose)]
    if otel:
        out += [f"## {report_callgrind.OTEL_TITLE}", "", report_callgrind.OTEL_INTRO, "",
                *report_callgrind.otel_table(otel), "", *_prose("otel", prose)]
    return out


def splice_callgrind(
    page: str,
    callgrind: list[dict[str, Any]],
    otel: list[dict[str, Any]],
    info: dict[str, Any] | None = None,
) -> str:
    """``page`` with only its callgrind parts rewritten: their goal rows, their sections (prose kept).

    The rest (the wall-clock tables, their goals and the machine line) is kept
    as it was, for a run that counts instructions without timing anything.
    """
    prose = {m["key"]: m["body"] for m in PROSE.finditer(page)}
    head, *sections = re.split(r"^(?=## )", page, flags=re.M)
    titles = {f"## {CALLGRIND_TITLE}", f"## {report_callgrind.OTEL_TITLE}"}
    placed_prose = _callgrind_prose(callgrind, otel)
    kept = [PROSE.sub(lambda m: "" if m["key"] in placed_prose else m[0], s)  # put back in its section
            for s in sections if s.split("\n", 1)[0] not in titles]
    new = "\n".join(callgrind_sections(callgrind, otel, prose, info)).rstrip() + "\n\n"
    rows = callgrind_goal_rows(callgrind, otel)
    out, placed = [head], False
    for section in kept:
        if section.startswith("## Goals\n") and not placed:
            lines = [line for line in section.split("\n") if "(instructions) |" not in line]
            last = max((i for i, line in enumerate(lines) if line.startswith("|")), default=len(lines) - 1)
            section = "\n".join([*lines[:last + 1], *rows, *lines[last + 1:]])
            out += [section, new]
            placed = True
        else:
            out.append(section)
    if not placed:
        out.append(new)
    return "".join(out).rstrip() + "\n"


def _prose(name: str, prose: dict[str, str]) -> list[str]:
    if name not in prose:
        return []
    return [f"<!-- prose {name} -->", prose[name].rstrip("\n"), "<!-- /prose -->", ""]


def main(argv: list[str] | None = None) -> int:
    """Run (or read) the benchmarks and rewrite the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="a pytest-benchmark JSON to report instead of running")
    parser.add_argument("--out", type=Path, default=OUT, help="the page to rewrite (docs/benchmarks.md)")
    parser.add_argument("--save", type=Path, help="also keep the run's pytest-benchmark JSON here")
    parser.add_argument("--callgrind", type=Path, help="a bench_callgrind.py --json file, not counting anew")
    parser.add_argument("--callgrind-only", action="store_true",
                        help="rewrite only the callgrind goals and sections; no wall-clock benchmarks")
    args = parser.parse_args(argv)
    document = json.loads(args.callgrind.read_text()) if args.callgrind is not None else count_callgrind()
    callgrind, otel = document["results"], document.get("otel", [])
    info = {k: v for k, v in document.items() if k not in ("results", "otel")}
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    if args.callgrind_only:
        args.out.write_text(splice_callgrind(old, callgrind, otel, info), encoding="utf-8")
        print(f"wrote the callgrind parts of {args.out} ({len(callgrind)} + {len(otel)} results)")
        return 0
    others = None
    if args.json is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "benchmarks.json"
            others = run_benchmarks(path)
            data = json.loads(path.read_text())
            if args.save:
                args.save.write_text(path.read_text())
    else:
        data = json.loads(args.json.read_text())
    prose = {m["key"]: m["body"] for m in PROSE.finditer(old)}
    args.out.write_text(render(data, prose, others, callgrind, otel, info), encoding="utf-8")
    print(f"wrote {args.out} ({len(data['benchmarks'])} benchmarks, {len(prose)} prose blocks kept)")
    if others is not None and others > NOISY:
        print(f"note: other processes used {others:.2f} cores during the run; numbers may be noisy, re-run "
              "when the machine is quiet")
    return 0


def count_callgrind() -> dict[str, Any]:
    """The callgrind cases and the OpenTelemetry comparison counted: ``bench_callgrind.py --json``."""
    import bench_callgrind

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "callgrind.json"
        bench_callgrind.main(["--json", str(path)])
        document: dict[str, Any] = json.loads(path.read_text())
    return document


if __name__ == "__main__":
    sys.exit(main())
