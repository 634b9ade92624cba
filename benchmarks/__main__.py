"""`make bench`: our builds side by side with virt-customize, measured in the same run.

Absolute seconds on a shared machine are noise; the ratios are the result. Each of our cases
runs --repeat times (default 2), the slow peer --peer-runs times (default 1).

    python -m benchmarks [--repeat N] [--peer-runs N] [--no-boot] [--results PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import peer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
README = ROOT / "README.md"
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"
AGENT = "26.0.0"
# Agent-only rebuilds take another release, so each really misses the agent layer; each
# repetition has its own layer cache, so the same two serve every repetition.
OTHER_AGENTS = ("25.1.0", "25.0.0", "24.1.0", "24.0.0")
SIZE = "5G"
# The goals of issue 6: (what, measured ratio key, at most).
TARGETS = (
    ("cold build vs virt-customize", "cold/peer", 0.2),
    ("agent-only rebuild vs our cold build", "agent-only/cold", 0.2),
    ("unchanged rebuild: appliance launches", "unchanged launches", 0.0),
    ("our qcow2 vs the peer's (as its users convert: plain)", "qcow2/peer plain", 0.5),
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def assembler(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Our CLI, as an operator runs it; returns (seconds, stderr)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "assembler", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: assembler {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def our_build(base: Path, cache: Path, out: Path, *extra: str) -> dict[str, Any]:
    seconds, stderr = assembler(
        "--guest-os", "debian", "--release", "bookworm", "--no-dev-mode",
        "--base", str(base), "--size", SIZE, "--layer-cache", str(cache),
        "-o", str(out), *extra,
    )  # fmt: skip
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    return {
        "seconds": seconds,
        "launches": stderr.count("launching the libguestfs appliance"),
        "layers": {layer["name"]: layer["cached"] for layer in manifest["layers"]},
        "steps": manifest["steps"],
        "size": out.stat().st_size,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "runs": [round(v, 1) for v in values],  # type: ignore[dict-item]
    }


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    from assembler import accel

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 2**20:.0f} GiB",
        "os": _os_release(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": qemu.splitlines()[0] if qemu else "?",
        "accel": str(accel.resolve(accel.Accel.AUTO)),
    }


def _os_release() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def prepare() -> tuple[Path, list[str]]:
    """Untimed: the base (built once, cached) and the agents' wheelhouses."""
    from assembler import accel
    from assembler.agent.wheelhouse import PypiAgent, WheelhouseSpec, build_wheelhouse
    from assembler.base import BaseSpec, cached_base
    from assembler.distros import RELEASES

    release = RELEASES["bookworm"]
    log("base: Debian bookworm (built by `assembler base` if not cached)")
    base = cached_base(BaseSpec(release), accel.resolve(accel.Accel.AUTO))
    agents: list[str] = []
    for version in (AGENT, *OTHER_AGENTS):
        if len(agents) == 3:
            break
        try:
            build_wheelhouse(WheelhouseSpec.for_release(release, PypiAgent(version), None))
        except Exception as exc:  # an agent release that cannot be resolved here is skipped
            log(f"agent {version} skipped: {exc}")
            continue
        agents.append(version)
    return base, agents


def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-", dir=args.workdir) as tmp:
        work = Path(tmp)
        base, agents = prepare()
        if len(agents) < 3:
            raise SystemExit("error: not enough agent releases resolved for the rebuild cases")
        sizes["base"] = base.stat().st_size
        last_out = work / "ours.qcow2"
        for i in range(args.repeat):
            cache = work / f"layers-{i}"
            out = work / f"ours-{i}.qcow2"
            log(f"ours, cold build {i + 1}/{args.repeat}")
            runs.setdefault("cold", []).append(our_build(base, cache, out))
            sizes["ours"] = out.stat().st_size
            other = agents[1]
            log(f"ours, agent-only rebuild {i + 1}/{args.repeat} (trove {other})")
            agent_out = work / f"agent-{i}.qcow2"
            runs.setdefault("agent-only", []).append(
                our_build(base, cache, agent_out, "--agent-version", other)
            )
            agent_out.unlink()
            other = agents[2]
            log(f"ours, agent-only rebuild, uncompressed {i + 1}/{args.repeat} (trove {other})")
            agent_out = work / f"agent-plain-{i}.qcow2"
            runs.setdefault("agent-only plain", []).append(
                our_build(base, cache, agent_out, "--agent-version", other, "--compression", "none")
            )
            agent_out.unlink()
            log(f"ours, unchanged rebuild {i + 1}/{args.repeat}")
            runs.setdefault("unchanged", []).append(our_build(base, cache, last_out))
            if i == 0:
                plain = work / "ours-plain.qcow2"
                our_build(base, cache, plain, "--compression", "none")
                sizes["ours plain"] = plain.stat().st_size
                plain.unlink()
            if i:
                out.unlink()
        if args.boot:
            for i in range(args.repeat):
                log(f"ours, boot test {i + 1}/{args.repeat}")
                seconds, _ = assembler("boot-test", str(work / "ours-0.qcow2"))
                runs.setdefault("boot-test", []).append({"seconds": seconds})
        files = work / "files"
        peer.collect_files(work / "ours-0.qcow2", files)
        from assembler.agent.wheelhouse import PypiAgent, WheelhouseSpec, build_wheelhouse
        from assembler.distros import RELEASES

        house = build_wheelhouse(
            WheelhouseSpec.for_release(RELEASES["bookworm"], PypiAgent(AGENT), None)
        )
        inputs = peer.PeerInputs(
            base=base,
            root_device=peer.root_device(base),
            size=SIZE,
            files=files,
            wheelhouse=house.directory,
            agent=f"trove=={AGENT}",
        )
        for i in range(args.peer_runs):
            log(f"peer (virt-customize), build {i + 1}/{args.peer_runs}")
            result = peer.run_peer(inputs, work, tcg=machine()["accel"] == "tcg")
            runs.setdefault("peer", []).append(
                {"seconds": result["seconds"], "phases": result["phases"]}
            )
            sizes["peer"] = result["output"].stat().st_size
            plain = work / "peer-plain.qcow2"
            peer.convert_plain(result["work_disk"], plain)
            sizes["peer plain"] = plain.stat().st_size
            for path in (result["output"], plain, result["work_disk"]):
                path.unlink()
    return report(runs, sizes, args)


def report(
    runs: dict[str, list[dict[str, Any]]], sizes: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    times = {name: summary([r["seconds"] for r in rs]) for name, rs in runs.items()}

    def med(name: str) -> float:
        return float(times[name]["median"])

    ratios = {
        "cold/peer": med("cold") / med("peer"),
        "agent-only/cold": med("agent-only") / med("cold"),
        "agent-only plain/cold": med("agent-only plain") / med("cold"),
        "unchanged/cold": med("unchanged") / med("cold"),
        "unchanged launches": float(max(r["launches"] for r in runs["unchanged"])),
        "qcow2/peer plain": sizes["ours"] / sizes["peer plain"],
        "qcow2/peer compressed": sizes["ours"] / sizes["peer"],
        "qcow2 plain/peer plain": sizes["ours plain"] / sizes["peer plain"],
        "qcow2/base": sizes["ours"] / sizes["base"],
    }
    if "boot-test" in times:
        ratios["boot-test/cold"] = med("boot-test") / med("cold")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "repeat": args.repeat,
        "peer_runs": args.peer_runs,
        "seconds": times,
        "sizes": sizes,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": [
            {"what": what, "ratio": key, "at_most": limit, "met": ratios[key] <= limit}
            for what, key, limit in TARGETS
        ],
        # Where the time goes: our cold build's steps, and the peer's phases.
        "profile": {
            "cold": runs["cold"][0]["steps"],
            "agent-only": runs["agent-only"][0]["steps"],
            "peer": runs["peer"][0]["phases"],
        },
    }


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    t = result["seconds"]
    s = result["sizes"]
    r = result["ratios"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, {m['memory']}), "
        f"{m['os']}, {m['qemu']}, accel {m['accel']}; ours x{result['repeat']}, "
        f"peer x{result['peer_runs']}.",
        "",
        "| case | min s | median s | ratio |",
        "|---|---:|---:|---|",
        _row("virt-customize + qemu-img convert (peer)", t["peer"], "1.00"),
        _row("ours: cold build (empty layer cache)", t["cold"], f"{r['cold/peer']:.2f} x peer"),
        _row("ours: agent-only rebuild", t["agent-only"], f"{r['agent-only/cold']:.2f} x cold"),
        _row(
            "ours: agent-only rebuild, uncompressed output",
            t["agent-only plain"],
            f"{r['agent-only plain/cold']:.2f} x cold",
        ),
        _row(
            "ours: unchanged rebuild",
            t["unchanged"],
            f"{r['unchanged/cold']:.2f} x cold, {r['unchanged launches']:.0f} launches",
        ),
    ]
    if "boot-test" in t:
        lines.append(_row("ours: boot test of the result", t["boot-test"], ""))
    lines += [
        "",
        "| image | size | ratio |",
        "|---|---:|---|",
        f"| base (Debian bookworm, `assembler base`) | {_mb(s['base'])} | |",
        f"| peer qcow2 (plain convert) | {_mb(s['peer plain'])} | 1.00 |",
        f"| peer qcow2 (compressed) | {_mb(s['peer'])} | {s['peer'] / s['peer plain']:.2f} |",
        f"| ours qcow2 (plain) | {_mb(s['ours plain'])} | {r['qcow2 plain/peer plain']:.2f} |",
        f"| ours qcow2 (default: zlib) | {_mb(s['ours'])} | {r['qcow2/peer plain']:.2f} |",
        "",
        "| target | measured | met |",
        "|---|---:|---|",
    ]
    for target in result["targets"]:
        lines.append(
            f"| {target['what']} <= {target['at_most']} | {r[target['ratio']]:.2f} | "
            f"{'yes' if target['met'] else 'no'} |"
        )
    return "\n".join(lines)


def _row(name: str, stats: dict[str, Any], ratio: str) -> str:
    return f"| {name} | {stats['min']:.0f} | {stats['median']:.0f} | {ratio} |"


def _mb(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def update_readme(text: str) -> None:
    readme = README.read_text()
    if MARK_START not in readme or MARK_END not in readme:
        return
    head, rest = readme.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    README.write_text(f"{head}{MARK_START}\n{text}\n{MARK_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--repeat", type=int, default=2, help="runs of each of our cases")
    p.add_argument("--peer-runs", type=int, default=1, help="runs of virt-customize")
    p.add_argument("--no-boot", dest="boot", action="store_false", help="skip the boot tests")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--workdir", default=None, help="scratch space (default: the temp dir)")
    p.add_argument("--no-readme", dest="readme", action="store_false")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.peer_runs < 1:
        raise SystemExit("error: --repeat and --peer-runs must be at least 1")
    if shutil.which("virt-customize") is None:
        raise SystemExit("error: virt-customize is missing (guestfs-tools); run `make setup`")
    os.environ.setdefault("ASSEMBLER_ACCEL", "auto")
    result = bench(args)
    text = table(result)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
