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

from benchmarks import fleet, peer

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
# The goals of issue 12: (what, measured ratio key, at most).
TARGETS = (
    ("cold build vs the tuned peer", "cold/peer", 0.25),
    ("agent-only rebuild vs the tuned peer", "agent-only/peer", 0.1),
    ("agent-only rebuild, datastore images embedded, vs the tuned peer", "agent-only embedded/peer",
     0.1),
    ("unchanged rebuild beyond reading the cache (s)", "unchanged beyond copy s", 2.0),
    ("unchanged rebuild: appliance launches", "unchanged launches", 0.0),
    ("our qcow2 vs the peer's plain convert", "qcow2/peer plain", 0.3),
)  # fmt: skip
# Every cache of ours starts empty in a cold build but these: the base and the agent's wheels.
KEPT_CACHES = ("bases", "wheelhouses", "agent")
EMBEDDED = ("postgresql", "trove-test-double/postgresql:15")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fresh_caches(root: Path, packages_from: Path | None = None) -> dict[str, str]:
    """An XDG cache of ours with nothing in it but the kept caches (and, for the warm-package
    case, another run's host package cache): the environment a cold build runs in."""
    from assembler.paths import cache_dir

    env = fleet.runner_caches(root, KEPT_CACHES)
    if packages_from is not None:
        ours = root / cache_dir().name
        (ours / "packages").symlink_to(packages_from / "trove-image-assembler" / "packages")
    return {"XDG_CACHE_HOME": env["XDG_CACHE_HOME"]}


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


def our_build(
    base: Path, cache: Path, out: Path, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    seconds, stderr = assembler(
        "--guest-os", "debian", "--release", "bookworm", "--no-dev-mode",
        "--base", str(base), "--size", SIZE, "--layer-cache", str(cache),
        "-o", str(out), *extra, env=env,
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
        from assembler.standin.build import standin_layout

        embed = f"oci:{standin_layout(EMBEDDED[0])}={EMBEDDED[1]}"
        sizes["base"] = base.stat().st_size
        for i in range(args.repeat):
            cache = work / f"layers-{i}"
            xdg = work / f"xdg-{i}"
            env = fresh_caches(xdg)
            out = work / f"ours-{i}.qcow2"
            log(f"ours, cold build {i + 1}/{args.repeat}")
            runs.setdefault("cold", []).append(our_build(base, cache, out, env=env))
            sizes["ours"] = out.stat().st_size
            if i == 0:
                log("ours, cold build with a warm package cache")
                warm = work / "warm.qcow2"
                runs.setdefault("cold warm-packages", []).append(
                    our_build(base, work / "layers-warm", warm,
                              env=fresh_caches(work / "xdg-warm", packages_from=xdg))
                )  # fmt: skip
                warm.unlink()
            other = agents[1]
            log(f"ours, agent-only rebuild {i + 1}/{args.repeat} (trove {other})")
            agent_out = work / f"agent-{i}.qcow2"
            runs.setdefault("agent-only", []).append(
                our_build(base, cache, agent_out, "--agent-version", other, env=env)
            )
            agent_out.unlink()
            other = agents[2]
            log(f"ours, agent-only rebuild, uncompressed {i + 1}/{args.repeat} (trove {other})")
            agent_out = work / f"agent-plain-{i}.qcow2"
            runs.setdefault("agent-only plain", []).append(
                our_build(base, cache, agent_out, "--agent-version", other,
                          "--compression", "none", env=env)
            )  # fmt: skip
            agent_out.unlink()
            log(f"ours, unchanged rebuild {i + 1}/{args.repeat}")
            again = work / f"again-{i}.qcow2"
            runs.setdefault("unchanged", []).append(our_build(base, cache, again, env=env))
            runs.setdefault("copy", []).append({"seconds": _copy_seconds(out, work)})
            again.unlink()
            if i == 0:
                plain = work / "ours-plain.qcow2"
                our_build(base, cache, plain, "--compression", "none", env=env)
                sizes["ours plain"] = plain.stat().st_size
                plain.unlink()
                log("ours, a datastore image embedded (untimed), then an agent-only rebuild")
                emb = work / "embedded.qcow2"
                our_build(base, cache, emb, "--datastore-image", embed, env=env)
                runs.setdefault("agent-only embedded", []).append(
                    our_build(base, cache, emb, "--datastore-image", embed,
                              "--agent-version", agents[1], env=env)
                )  # fmt: skip
                emb.unlink()
            if i:
                out.unlink()
        if args.boot:
            # Once: that the result boots is the point; its time is no target (2.3 min here).
            log("ours, boot test")
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
        tcg = machine()["accel"] == "tcg"
        for i in range(args.peer_runs):
            log(f"peer (virt-customize --smp 2 --memsize 2048), build {i + 1}/{args.peer_runs}")
            result = peer.run_peer(inputs, work, tcg=tcg)
            runs.setdefault("peer", []).append(
                {"seconds": result["seconds"], "phases": result["phases"]}
            )
            sizes["peer"] = result["output"].stat().st_size
            plain = work / "peer-plain.qcow2"
            peer.convert_plain(result["work_disk"], plain)
            sizes["peer plain"] = plain.stat().st_size
            for path in (result["output"], plain, result["work_disk"]):
                path.unlink()
        if args.peer_defaults:
            log("peer with its own defaults, as its users run it")
            result = peer.run_peer(inputs, work, tcg=tcg, tuned=False)
            runs["peer defaults"] = [{"seconds": result["seconds"], "phases": result["phases"]}]
            for path in (result["output"], result["work_disk"]):
                path.unlink()
    return report(runs, sizes, args)


def _copy_seconds(image: Path, work: Path) -> float:
    """What reading the cache costs: a plain copy of an output of the same size (the floor
    of an unchanged rebuild)."""
    started = time.monotonic()
    shutil.copyfile(image, work / "copy.tmp")
    seconds = time.monotonic() - started
    (work / "copy.tmp").unlink()
    return seconds


def step_seconds(steps: list[dict[str, Any]], *names: str) -> float:
    return sum(float(s["seconds"]) for s in steps if s["name"] in names)


def floors(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """What each case cannot go below in this design, from its own profile: the one appliance
    launch it needs, dpkg's own work, the venv's upload, the output's compression."""
    cold = runs["cold"][0]["steps"]
    agent = runs["agent-only"][0]["steps"]
    launch = min(float(s["seconds"]) for s in cold if s["name"] == "launch")
    dpkg = step_seconds(cold, "packages")
    upload = step_seconds(cold, "agent-venv")
    convert = step_seconds(cold, "convert")
    # An agent-only rebuild need compress only what the agent layer holds: its share of the
    # cold output's compression, measured by its upload's share of the cold build's writes.
    share = step_seconds(agent, "agent-venv") / max(1.0, dpkg + upload)
    return {
        "cold": launch + dpkg + upload + convert,
        "agent-only": launch + step_seconds(agent, "agent-venv") + convert * share,
        "unchanged": float(statistics.median(r["seconds"] for r in runs["copy"])),
    }


def report(
    runs: dict[str, list[dict[str, Any]]], sizes: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    times = {name: summary([r["seconds"] for r in rs]) for name, rs in runs.items()}

    def med(name: str) -> float:
        return float(times[name]["median"])

    floor = floors(runs)
    ratios = {
        "cold/peer": med("cold") / med("peer"),
        "cold warm-packages/peer": med("cold warm-packages") / med("peer"),
        "agent-only/peer": med("agent-only") / med("peer"),
        "agent-only embedded/peer": med("agent-only embedded") / med("peer"),
        "agent-only/cold": med("agent-only") / med("cold"),
        "agent-only plain/cold": med("agent-only plain") / med("cold"),
        "unchanged/cold": med("unchanged") / med("cold"),
        "unchanged beyond copy s": med("unchanged") - floor["unchanged"],
        "unchanged launches": float(max(r["launches"] for r in runs["unchanged"])),
        "cold/floor": med("cold") / floor["cold"],
        "agent-only/floor": med("agent-only") / floor["agent-only"],
        "unchanged/floor": med("unchanged") / max(0.1, floor["unchanged"]),
        "qcow2/peer plain": sizes["ours"] / sizes["peer plain"],
        "qcow2/peer compressed": sizes["ours"] / sizes["peer"],
        "qcow2 plain/peer plain": sizes["ours plain"] / sizes["peer plain"],
        "qcow2/base": sizes["ours"] / sizes["base"],
    }
    if "peer defaults" in times:
        ratios["cold/peer defaults"] = med("cold") / med("peer defaults")
        ratios["peer defaults/peer"] = med("peer defaults") / med("peer")
    if "boot-test" in times:
        ratios["boot-test/cold"] = med("boot-test") / med("cold")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "repeat": args.repeat,
        "peer_runs": args.peer_runs,
        "seconds": times,
        "floors": {k: round(v, 1) for k, v in floor.items()},
        "sizes": sizes,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": [
            {"what": what, "ratio": key, "at_most": limit, "met": ratios[key] <= limit}
            for what, key, limit in TARGETS
        ],
        # Where the time goes: our builds' steps, and the peer's phases.
        "profile": {
            **{
                case: runs[case][0]["steps"]
                for case in (
                    "cold",
                    "cold warm-packages",
                    "agent-only",
                    "agent-only embedded",
                    "unchanged",
                )
            },
            "peer": runs["peer"][0]["phases"],
        },
    }


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    t = result["seconds"]
    s = result["sizes"]
    r = result["ratios"]
    f = result["floors"]

    def vs_peer(case: str) -> str:
        return f"{t[case]['median'] / t['peer']['median']:.3f}"

    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, {m['memory']}), "
        f"{m['os']}, {m['qemu']}, accel {m['accel']}; ours x{result['repeat']}, "
        f"peer x{result['peer_runs']}. A floor is what the case cannot go below in this "
        "design, from its own profile (launch, dpkg, upload, compression).",
        "",
        "| case | min s | median s | vs tuned peer | floor s | vs floor |",
        "|---|---:|---:|---:|---:|---:|",
        _row("peer: virt-customize --smp 2 --memsize 2048, qemu-img convert -c", t["peer"],
             "1.000"),
    ]  # fmt: skip
    if "peer defaults" in t:
        lines.append(
            _row("peer with its own defaults", t["peer defaults"], vs_peer("peer defaults"))
        )
    lines += [
        _row("ours: cold (our caches empty but base and wheels)", t["cold"], vs_peer("cold"),
             f["cold"], r["cold/floor"]),
        _row("ours: cold, warm package cache", t["cold warm-packages"],
             vs_peer("cold warm-packages")),
        _row("ours: agent-only rebuild", t["agent-only"], vs_peer("agent-only"),
             f["agent-only"], r["agent-only/floor"]),
        _row("ours: agent-only rebuild, a datastore image embedded", t["agent-only embedded"],
             vs_peer("agent-only embedded")),
        _row("ours: agent-only rebuild, uncompressed output", t["agent-only plain"],
             vs_peer("agent-only plain")),
        _row("ours: unchanged rebuild", t["unchanged"], vs_peer("unchanged"), f["unchanged"],
             r["unchanged/floor"]),
    ]  # fmt: skip
    if "peer defaults" in t:
        lines.append(
            f"\nOurs cold against the peer with its defaults: {r['cold/peer defaults']:.2f}."
        )
    if "boot-test" in t:
        lines.append(f"\nBoot test of the result: median {t['boot-test']['median']:.0f} s.")
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


def _row(
    name: str,
    stats: dict[str, Any],
    ratio: str,
    floor: float | None = None,
    to_floor: float | None = None,
) -> str:
    tail = f"{floor:.0f} | {to_floor:.2f}" if floor is not None and to_floor is not None else " | "
    return f"| {name} | {stats['min']:.0f} | {stats['median']:.0f} | {ratio} | {tail} |"


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
    p.add_argument(
        "--no-peer-defaults", dest="peer_defaults", action="store_false",
        help="skip the peer's run with virt-customize's own defaults",
    )  # fmt: skip
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--workdir", default=None, help="scratch space (default: the temp dir)")
    p.add_argument("--no-readme", dest="readme", action="store_false")
    p.add_argument("--no-fleet", dest="fleet", action="store_false", help="skip the fleet cases")
    p.add_argument(
        "--fleet-only", action="store_true",
        help="only the registry and matrix cases (results in fleet-latest.json beside --results)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.fleet_only:
        return fleet_only(args)
    if args.repeat < 1 or args.peer_runs < 1:
        raise SystemExit("error: --repeat and --peer-runs must be at least 1")
    if shutil.which("virt-customize") is None:
        raise SystemExit("error: virt-customize is missing (guestfs-tools); run `make setup`")
    os.environ.setdefault("ASSEMBLER_ACCEL", "auto")
    result = bench(args)
    text = table(result)
    if args.fleet:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir=args.workdir) as tmp:
            runs = fleet.run(Path(tmp), log)
        found = fleet.ratios(runs)
        result["fleet"] = {"runs": runs, "ratios": found, "targets": fleet.targets(found)}
        text += "\n\n" + fleet.table(runs, found)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.readme:
        update_readme(text)
    return 0


def fleet_only(args: argparse.Namespace) -> int:
    os.environ.setdefault("ASSEMBLER_ACCEL", "auto")
    with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir=args.workdir) as tmp:
        runs = fleet.run(Path(tmp), log)
    found = fleet.ratios(runs)
    text = fleet.table(runs, found)
    print(f"{machine()}\n{text}")
    out = args.results.with_name("fleet-latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": runs,
        "ratios": {k: round(v, 3) for k, v in found.items()},
        "targets": fleet.targets(found),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
