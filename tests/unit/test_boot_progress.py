"""The boot test's waiting rules (assembler/boottest/progress.py), on console text as QEMU
writes it: a slow good guest is waited for, a broken one is stopped as soon as it shows it."""

from __future__ import annotations

import json

from assembler.boottest.progress import Limits, Snapshot, Watch, fatal_reason, parse_port

LIMITS = Limits(ceiling=1200, stall=240)
KERNEL = "[    0.000000] Linux version 6.1.0-40-cloud-amd64\n"
CLOUD_INIT = "[   20.1] cloud-init[301]: Cloud-init v. 22.4.2 running 'init-local'\n"
LOGIN = "\ntrove-boot-1a2b3c login: "
FINISHED = (
    "cloud-init[512]: Cloud-init v. 22.4.2 finished at Tue, 01 Dec 2026 10:00:00 +0000. "
    "Datasource DataSourceOpenStackLocal [net,ver=2].  Up 114.20 seconds\n"
)
NONE_FINISHED = (
    "cloud-init[512]: Cloud-init v. 22.4.2 finished at Tue, 01 Dec 2026 10:00:00 +0000. "
    "Datasource DataSourceNone.  Up 60.00 seconds\n"
)


def beat(section: str) -> str:
    return json.dumps({"trove_boot_progress": 1, "section": section, "uptime": 1.0}) + "\n"


def facts_line() -> str:
    return json.dumps({"trove_boot_facts": 1, "facts": {"uptime": 1.0}}) + "\n"


def run(watch: Watch, frames: list[tuple[float, str, str]]) -> str | None:
    for now, console, port in frames:
        if watch.feed(Snapshot(now, console, port)) is not None:
            break
    return watch.verdict


def test_a_slow_good_guest_is_waited_for_and_its_phases_kept() -> None:
    # As measured on the slow machine: login at 75 s, cloud-init done at 114 s, the gatherer
    # busy (a 51 s key scan among it) until 186 s; fixed windows gave up at 195 s.
    watch = Watch(LIMITS)
    c1, c2, c3 = KERNEL, KERNEL + CLOUD_INIT + LOGIN, KERNEL + CLOUD_INIT + LOGIN + FINISHED
    frames = [(5, c1, ""), (75, c2, ""), (114, c3, ""), (120, c3, beat("start"))]
    frames += [(120 + 10 * i, c3, beat("start") + beat("agent") * i) for i in range(1, 7)]
    frames += [(240, c3, beat("start") + beat("private-keys") + facts_line())]
    assert run(watch, frames) == "facts"
    assert watch.facts == {"uptime": 1.0}
    assert watch.phases == {
        "kernel": 5,
        "login": 75,
        "cloud-init": 114,
        "gatherer": 120,
        "facts": 240,
    }


def test_silence_ends_the_wait_after_the_stall_limit_not_before() -> None:
    watch = Watch(LIMITS)
    frames = [(5, KERNEL, ""), (200, KERNEL, ""), (244, KERNEL, "")]
    assert run(watch, frames) is None
    watch.feed(Snapshot(246, KERNEL, ""))
    assert watch.verdict is not None and "no progress for 240 s" in watch.verdict
    assert "after kernel" in watch.verdict and not watch.certain


def test_outside_activity_counts_as_progress() -> None:
    # Metadata requests while the console is quiet (cloud-init fetching) keep the guest alive.
    watch = Watch(LIMITS)
    for now in range(0, 600, 100):
        assert watch.feed(Snapshot(float(now), KERNEL, "", activity=now)) is None


def test_the_ceiling_holds_even_while_the_guest_chatters() -> None:
    watch = Watch(Limits(ceiling=100, stall=240))
    verdict = run(watch, [(float(t), KERNEL + "x" * t, "") for t in range(0, 120, 10)])
    assert verdict == "no facts from the guest within 100 s"


def test_fatal_console_lines_end_the_wait_at_once() -> None:
    grub = "error: file `/boot/vmlinuz-6.1.0-40-cloud-amd64' not found.\n" \
        "error: you need to load the kernel first.\n"  # fmt: skip
    watch = Watch(LIMITS)
    assert run(watch, [(8.0, grub, "")]) is not None
    assert watch.certain and "grub found no kernel" in str(watch.verdict)
    panic = KERNEL + "Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    assert "panicked" in str(fatal_reason(panic, {}, 10, False))
    # OVMF with no loader on the ESP, as its console showed it (colours and all).
    shell = (
        'BdsDxe: failed to load Boot0001 "UEFI Misc Device"\r\n'
        "Press \x1b[1m\x1b[37m\x1b[40mESC\x1b[0m in 1 seconds to skip startup.nsh\r\n"
        "\x1b[18;01H\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m"
    )
    assert "UEFI firmware found nothing to boot" in str(fatal_reason(shell, {}, 140, False))


def test_no_datasource_is_certain_from_the_console() -> None:
    disabled = KERNEL + "Starting systemd-user-sessions.service\n" + LOGIN
    assert "without running cloud-init" in str(fatal_reason(disabled, {"login": 50}, 50, False))
    # Before the login prompt the same console proves nothing yet.
    assert fatal_reason(KERNEL, {}, 50, False) is None
    none = KERNEL + CLOUD_INIT + LOGIN + NONE_FINISHED
    assert "DataSourceNone" in str(fatal_reason(none, {"login": 50}, 60, False))


def test_a_gatherer_that_never_starts_is_given_its_grace_first() -> None:
    console = KERNEL + CLOUD_INIT + LOGIN + FINISHED
    phases = {"login": 75.0, "cloud-init": 114.0}
    assert fatal_reason(console, phases, 200, False) is None
    assert "never started" in str(fatal_reason(console, phases, 240, False))
    assert fatal_reason(console, phases, 240, True) is None


def test_port_lines_half_written_or_noisy_are_skipped() -> None:
    port = "garbage\n" + beat("start") + '{"trove_boot_facts": 1, "fac'
    beats, facts = parse_port(port)
    assert [b["section"] for b in beats] == ["start"] and facts is None
    beats, facts = parse_port(beat("start") + facts_line())
    assert facts == {"uptime": 1.0}
