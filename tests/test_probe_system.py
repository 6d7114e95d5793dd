"""system probe: fixture trees (exact), this machine, node name sources, os-release parsing."""

from __future__ import annotations

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, run

from nodecompat.probes.system import SystemProbe, parse_os_release


@pytest.fixture(autouse=True)
def _no_node_name_env(monkeypatch):
    monkeypatch.delenv("NODE_NAME", raising=False)


def test_h100_exact():
    wire, out = run(SystemProbe(node_name="gpu-node-01.example"), fixture_host("h100-server"))
    assert wire["attributes"] == {
        "system.osrelease": {
            "elements": {
                "HOME_URL": "https://www.ubuntu.com/",
                "ID": "ubuntu",
                "ID_LIKE": "debian",
                "NAME": "Ubuntu",
                "PRETTY_NAME": "Ubuntu 22.04.3 LTS",
                "UBUNTU_CODENAME": "jammy",
                "VERSION": "22.04.3 LTS (Jammy Jellyfish)",
                "VERSION_CODENAME": "jammy",
                "VERSION_ID": "22.04",
                "VERSION_ID.major": "22",
                "VERSION_ID.minor": "04",
            }
        },
        "system.dmiid": {
            "elements": {"bios_version": "2.1", "product_name": "SYS-821GE-TNHR", "sys_vendor": "Supermicro"}
        },
        "system.name": {"elements": {"nodename": "gpu-node-01.example"}},
    }
    assert out.notes == []


def test_mi300_exact_and_env_node_name(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "mi300-node")
    wire, _ = run(SystemProbe(), fixture_host("amd-mi300"))
    assert attrs(wire, "system.osrelease") == {
        "NAME": "Red Hat Enterprise Linux",
        "VERSION": "9.3 (Plow)",
        "ID": "rhel",
        "ID_LIKE": "fedora",
        "VERSION_ID": "9.3",
        "PLATFORM_ID": "platform:el9",
        "PRETTY_NAME": "Red Hat Enterprise Linux 9.3 (Plow)",
        "ANSI_COLOR": "0;31",
        "CPE_NAME": "cpe:/o:redhat:enterprise_linux:9::baseos",
        "VERSION_ID.major": "9",
        "VERSION_ID.minor": "3",
    }
    assert attrs(wire, "system.dmiid") is None
    assert attrs(wire, "system.name") == {"nodename": "mi300-node"}


def test_plain_vm_exact_no_node_name_given():
    wire, out = run(SystemProbe(), fixture_host("plain-vm"))
    assert attrs(wire, "system.osrelease") == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "NAME": "Debian GNU/Linux",
        "VERSION_ID": "12",
        "VERSION": "12 (bookworm)",
        "VERSION_CODENAME": "bookworm",
        "ID": "debian",
        "HOME_URL": "https://www.debian.org/",
        "SUPPORT_URL": "https://www.debian.org/support",
        "BUG_REPORT_URL": "https://bugs.debian.org/",
        "VERSION_ID.major": "12",
    }
    # nothing names the Kubernetes node: nodename is left out (the hostname is not established as it)
    assert attrs(wire, "system.name") == {}
    assert out.notes == ["no node name given ($NODE_NAME unset, no --node-name): system.name nodename left out"]


def test_real_host():
    with open("/etc/os-release") as f:
        ref = {}
        for line in f:
            k, sep, v = line.rstrip("\n").partition("=")
            if sep and v:
                ref[k] = v.strip('"')
    wire, _ = run(SystemProbe(node_name="n1"), REAL)
    got = attrs(wire, "system.osrelease") or {}
    assert {k: v for k, v in got.items() if not k.startswith("VERSION_ID.")} == ref
    assert attrs(wire, "system.name") == {"nodename": "n1"}


def test_os_release_only_from_etc_as_nfd(tmp_path):
    """NFD system.go parseOSRelease() opens EtcDir/os-release only; a link into /usr/lib resolves in the root."""
    host = copy_fixture("plain-vm", tmp_path)
    host.path("/etc/os-release").unlink()
    host.path("/usr/lib").mkdir(parents=True)
    host.path("/usr/lib/os-release").write_text('ID=linked\nVERSION_ID="1.2.3"\n')
    host.path("/etc/os-release").symlink_to("/usr/lib/os-release")  # absolute, as on some images
    wire, _ = run(SystemProbe(node_name="x"), host)
    assert attrs(wire, "system.osrelease") == {
        "ID": "linked",
        "VERSION_ID": "1.2.3",
        "VERSION_ID.major": "1",
        "VERSION_ID.minor": "2",
    }
    host.path("/etc/os-release").unlink()
    wire, out = run(SystemProbe(node_name="x"), host)
    assert attrs(wire, "system.osrelease") is None
    assert out.notes == ["/etc/os-release unreadable: system.osrelease left out"]


def test_parse_os_release_edge_cases():
    text = (
        "# comment\nID='single'\nEMPTY=\n  INDENTED=x\nVERSION_ID=rolling\nBAD-KEY=1\n"
        'QUOTED="a \\"b\\""\nNOEQUALS\n'
    )
    assert parse_os_release(text) == {"ID": "single", "VERSION_ID": "rolling", "QUOTED": 'a \\"b\\'}
    assert parse_os_release('VERSION_ID="22.04"\n')["VERSION_ID.minor"] == "04"
    # splitVersion's regex is anchored: "5-rc1" has no major; for "5.0-rc1" Go's leftmost-first match
    # leaves minor empty (so not published) and major 5; values keep their spaces (no TrimSpace)
    assert "VERSION_ID.major" not in parse_os_release("VERSION_ID=5-rc1\n")
    got = parse_os_release("VERSION_ID=5.0-rc1\n")
    assert (got.get("VERSION_ID.major"), got.get("VERSION_ID.minor")) == ("5", None)
    assert parse_os_release("NAME= spaced \n")["NAME"] == " spaced "
    assert parse_os_release("") == {}
