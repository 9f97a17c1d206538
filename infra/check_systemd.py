#!/usr/bin/env python3
"""Checks the systemd units under infra/systemd.

Always: each unit parses as an INI file (sections, Key=Value lines, comments,
continuations) and has the sections and settings the deployment relies on; the worker's
TimeoutStopSec exceeds every drain timeout + kill grace (+ margin) the Terraform gives
the workers. Then, when systemd-analyze is available and can run here,
`systemd-analyze verify` on both units (with the binaries' paths pointed at stand-ins,
since hodei is not installed on the checking machine); any warning fails.

Usage: check_systemd.py [INFRA_DIR]   (default: the directory of this file)
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MARGIN_SECONDS = 30

REQUIRED = {
    "hodei.service": {
        "Unit": {"Description": None},
        "Service": {
            "ExecStart": "/usr/local/bin/hodei serve --config /etc/hodei/config.yaml",
            "Restart": "on-failure",
            "DynamicUser": "yes",
            "StateDirectory": None,
            "ProtectSystem": "strict",
            "ProtectHome": None,
            "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
            "CapabilityBoundingSet": "",
            "RestrictAddressFamilies": None,
            "SystemCallFilter": "@system-service",
        },
        "Install": {"WantedBy": None},
    },
    "hodei-worker.service": {
        "Unit": {"Description": None},
        "Service": {
            "EnvironmentFile": "/etc/hodei/worker.env",
            "ExecStart": "/usr/local/bin/hodei-worker run --pool ${HODEI_POOL} --instance-id ${HODEI_INSTANCE_ID}"
            " --name ${HODEI_WORKER_NAME} $HODEI_WORKER_ARGS",
            "Restart": "on-failure",
            "KillSignal": "SIGTERM",
            "KillMode": "mixed",
            "TimeoutStopSec": None,
        },
        "Install": {"WantedBy": None},
    },
}

problems = []


def parse_unit(path):
    """{section: {key: [values]}}, as systemd reads it; problems for what it would not."""
    sections = {}
    current = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        header = re.fullmatch(r"\[([A-Za-z0-9-]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        if current is None:
            problems.append(f"{path.name}:{number}: setting outside any [section]")
            continue
        if "=" not in line:
            problems.append(f"{path.name}:{number}: not a Key=Value line: {line!r}")
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            problems.append(f"{path.name}:{number}: bad key {key!r}")
        current.setdefault(key, []).append(value)
    if pending:
        problems.append(f"{path.name}: ends in a continuation line")
    return sections


def seconds(text):
    """A systemd time span (`660`, `660s`, `11min`, `1h 5min`) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0
    for amount, unit in re.findall(r"(\d+)\s*([a-z]*)", text):
        if unit not in units:
            raise ValueError(f"unknown time unit {unit!r}")
        total += int(amount) * units[unit]
    return total


def check_units(infra):
    units = {}
    for name, required in REQUIRED.items():
        path = infra / "systemd" / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        sections = parse_unit(path)
        units[name] = sections
        for section, keys in required.items():
            if section not in sections:
                problems.append(f"{name}: no [{section}] section")
                continue
            for key, expected in keys.items():
                values = sections[section].get(key)
                if not values:
                    problems.append(f"{name}: [{section}] has no {key}=")
                elif expected is not None and expected not in values:
                    problems.append(f"{name}: [{section}] {key}= is {values!r}, expected {expected!r}")
        print(f"  ok  {name}: parses; [{'], ['.join(required)}] with the required settings")
    return units


def check_stop_timeout(infra, units):
    worker = units.get("hodei-worker.service")
    if not worker or not worker.get("Service", {}).get("TimeoutStopSec"):
        return
    timeout = seconds(worker["Service"]["TimeoutStopSec"][-1])
    found = 0
    for path in sorted((infra / "terraform").rglob("*.tf")):
        for args in re.findall(r'"([^"\n]*--drain-timeout-seconds[^"\n]*)"', path.read_text()):
            drain = re.search(r"--drain-timeout-seconds[ =](\d+)", args)
            grace = re.search(r"--kill-grace-seconds[ =](\d+)", args)
            if drain is None:  # prose about the flag, not a value
                continue
            need = int(drain.group(1)) + (int(grace.group(1)) if grace else 10) + MARGIN_SECONDS
            found += 1
            if timeout < need:
                problems.append(
                    f"hodei-worker.service: TimeoutStopSec={timeout}s is less than drain + kill grace + "
                    f"{MARGIN_SECONDS}s margin = {need}s for {args!r} ({path.relative_to(infra)})"
                )
    print(f"  ok  hodei-worker.service: TimeoutStopSec={timeout}s covers the {found} worker argument default(s) in the Terraform")


def verify(infra):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        print("  skipped  systemd-analyze verify: systemd-analyze is not installed here")
        return
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        (directory / "bin").mkdir()
        for binary in ("hodei", "hodei-worker"):
            stub = directory / "bin" / binary
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        paths = []
        for name in REQUIRED:
            text = (infra / "systemd" / name).read_text().replace("/usr/local/bin/", f"{directory}/bin/")
            (directory / name).write_text(text)
            paths.append(str(directory / name))
        result = subprocess.run([tool, "verify", *paths], capture_output=True, text=True, timeout=120)
        output = (result.stdout + result.stderr).strip()
        about_units = [line for line in output.splitlines() if any(name in line for name in REQUIRED)]
        if about_units:
            problems.extend(f"systemd-analyze verify: {line.replace(str(directory) + '/', '')}" for line in about_units)
        elif result.returncode != 0:
            reason = output.splitlines()[0] if output else f"exit {result.returncode}"
            print(f"  skipped  systemd-analyze verify: it cannot run here ({reason})")
        else:
            print("  ok  systemd-analyze verify: both units, no warnings")


def main():
    infra = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent
    units = check_units(infra)
    check_stop_timeout(infra, units)
    if not problems:
        verify(infra)
    if problems:
        print(f"check_systemd: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  FAIL  {line}", file=sys.stderr)
        return 1
    print("check_systemd: no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
