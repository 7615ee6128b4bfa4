"""SUMMARY.md of a first-contact run (bench/gpu_report.sh), rewritten after every stage so a
run cut off still reports. Standard library only (it runs before bpgpu is installed).

    python3 bench/first_contact/summary.py OUT > OUT/SUMMARY.md

Reads what the stages left in OUT: status.tsv (stage, exit status, seconds, note),
preflight.json, machine.json, logs/*.log, logs/pytest-*.xml, microbench.json and the benchmark's
report.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

#: every stage, in the order the script runs them (bench/gpu_report.sh); the summary lists them
#: in the order they were recorded, then those not reached
STAGES = (
    "preflight",
    "install",
    "build",
    "tests",
    "tests-nvrtc",
    "tests-nodebug",
    "microbench",
    "sanitize-memcheck",
    "sanitize-racecheck",
    "sanitize-synccheck",
    "sanitize-initcheck",
    "bench",
)


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text[-lines:])[-300:]


def pytest_result(xml: Path) -> str:
    """'N passed, F failed, E errors, S skipped' and the first failures, from JUnit XML."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError):
        return ""
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return ""
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    text = f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    failed = [
        f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    if failed:
        text += "; first failures: " + ", ".join(failed[:5])
    return text


def sanitizer_result(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    found = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    first = re.search(r"^========= (?!COMPUTE-SANITIZER|ERROR SUMMARY)(.+)$", text, re.MULTILINE)
    result = f"{found[-1]} errors" if found else "no ERROR SUMMARY line"
    return result + (f"; first: {first[1][:200]}" if first and found and found[-1] != "0" else "")


def stage_notes(out: Path, stage: str) -> str:
    """What a finished stage found, in a few words."""
    logs = out / "logs"
    if stage.startswith("tests"):
        return pytest_result(logs / f"pytest-{stage}.xml")
    if stage.startswith("sanitize-"):
        return sanitizer_result(logs / f"{stage}.log")
    if stage == "preflight":
        missing = [name for name, what in load(out / "preflight.json").items() if not what["ok"]]
        return "missing: " + ", ".join(missing) if missing else "everything found"
    if stage == "build":
        spills = re.findall(
            r"Compiling entry function '(\w+_f32)' for '(sm_\d+)'\s+\S.*?(\d+) bytes spill stores",
            (logs / "build.log").read_text(errors="replace")
            if (logs / "build.log").exists()
            else "",
            flags=re.DOTALL,
        )
        spilled = sorted({f"{k} ({a})" for k, a, s in spills if s != "0"})
        return f"{len(spills)} float32 kernels compiled; spills: " + (", ".join(spilled) or "none")
    if stage == "bench":
        report = load(out / "report.json")
        rows = len(report.get("rows", []))
        return f"{rows} rows in report.json" if report else tail(logs / "bench.log")
    return ""


def main(out: Path) -> str:
    statuses: dict[str, tuple[str, str, str]] = {}
    status_file = out / "status.tsv"
    if status_file.exists():
        for line in status_file.read_text().splitlines():
            name, rc, seconds, *note = [*line.split("\t"), ""]
            statuses[name] = (rc, seconds, note[0])
    machine = load(out / "machine.json")
    fake = os.environ.get("BPGPU_FAKE_GPU") == "1"
    lines = ["# bpgpu's first contact with a GPU", ""]
    if fake:
        lines += [
            "**FAKE: no GPU.** BPGPU_FAKE_GPU=1: nvidia-smi and compute-sanitizer are stand-ins,",
            "CuPy is tests/fake_cupy.py over the CPU emulation of the CUDA C. This run tests the",
            "script, not the kernels on a GPU: never commit it as a GPU report.",
            "",
        ]
    commit = machine.get("commit", "unknown")
    lines += [
        f"GPU: {machine.get('gpu', 'unknown')} ({machine.get('arch', '?')}); commit {commit}"
        f"{' (dirty)' if machine.get('dirty') else ''}.",
        "",
        "| stage | exit status | seconds | result |",
        "|---|---|---|---|",
    ]
    for stage in [*statuses, *(s for s in STAGES if s not in statuses)]:
        if stage not in statuses:
            lines.append(f"| {stage} | not reached | | |")
            continue
        rc, seconds, note = statuses[stage]
        found = "" if rc == "skipped" else stage_notes(out, stage)
        result = "; ".join(part for part in (note, found) if part)
        if rc not in ("0", "skipped") and not found:
            result = "; ".join(part for part in (note, tail(out / "logs" / f"{stage}.log")) if part)
        lines.append(f"| {stage} | {rc} | {seconds} | {result} |")
    preflight = load(out / "preflight.json")
    if preflight:
        lines += ["", "## What the machine has", "", "| tool | found | what |", "|---|---|---|"]
        for name, what in preflight.items():
            lines.append(f"| {name} | {'yes' if what['ok'] else 'NO'} | {what['detail']} |")
    micro = out / "microbench.md"
    if micro.exists():
        body = micro.read_text().split("\n", 1)[-1].strip()
        lines += ["", "## Micro-benchmark", "", body]
    lines += [
        "",
        "Logs: logs/<stage>.log; JUnit XML: logs/pytest-<stage>.xml; the benchmark's report.json",
        "and report.md beside this file (the layout of bench/results/gpu/).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1])))
