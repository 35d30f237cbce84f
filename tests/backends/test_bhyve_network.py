"""Network isolation on bhyve: link protection on every job's VNIC, a fixed address per job
(allowed-ips, handed to the guest), the ipf egress rules; against the stateful dladm fake,
which answers set-linkprop as dladm(8) does."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestrator.backends.base import BackendError
from orchestrator.backends.bhyve import BhyveBackend
from orchestrator.backends.bhyve_network import BhyveNetwork, ipf_rules
from tests.backends.test_bhyve import make_settings, spec
from tests.fakes.illumos.fixtures import LINK, FakeIllumos

NETWORK = {"addresses": "10.77.0.10-10.77.0.11", "gateway": "10.77.0.1"}


def ok(fake: FakeIllumos, *argv: str) -> str:
    result = fake.run(*argv)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(fake: FakeIllumos, *argv: str) -> str:
    result = fake.run(*argv)
    assert result.returncode == 1, f"{argv} succeeded"
    return result.stderr.strip()


def linkprops(fake: FakeIllumos, vnic: str) -> str:
    return ok(fake, "dladm", "show-linkprop", "-c", "-o", "property,value",
              "-p", "protection,allowed-ips", vnic)


# -- the dladm fake --------------------------------------------------------------------------


def test_dladm_link_properties_as_the_man_page_says(fake_illumos: FakeIllumos) -> None:
    ok(fake_illumos, "dladm", "create-vnic", "-l", LINK, "job1_0")
    assert linkprops(fake_illumos, "job1_0") == "protection:\nallowed-ips:\n"
    ok(fake_illumos, "dladm", "set-linkprop", "-p", "protection=mac-nospoof,ip-nospoof",
       "-p", "allowed-ips=10.77.0.10", "job1_0")
    assert linkprops(fake_illumos, "job1_0") == \
        "protection:mac-nospoof,ip-nospoof\nallowed-ips:10.77.0.10\n"

    assert fails(fake_illumos, "dladm", "set-linkprop", "-p", "colour=blue", "job1_0") == \
        "dladm: warning: invalid link property 'colour'"
    assert fails(fake_illumos, "dladm", "set-linkprop", "-p", "protection=ip-nospoof",
                 "nosuch0") == "dladm: link nosuch0 is not valid: object not found"
    assert fails(fake_illumos, "dladm", "set-linkprop", "-p", "protection=no-spoofing",
                 "job1_0") == ("dladm: warning: link property 'protection' must be one of: "
                               "mac-nospoof,restricted,ip-nospoof,dhcp-nospoof")
    assert fails(fake_illumos, "dladm", "set-linkprop", "-p", "allowed-ips=10.77.0.999",
                 "job1_0") == "dladm: warning: invalid link property '10.77.0.999'"
    # A refused command changes nothing.
    assert "mac-nospoof,ip-nospoof" in linkprops(fake_illumos, "job1_0")

    ok(fake_illumos, "dladm", "reset-linkprop", "-p", "allowed-ips", "job1_0")
    assert linkprops(fake_illumos, "job1_0") == "protection:mac-nospoof,ip-nospoof\nallowed-ips:\n"
    # The properties die with the VNIC: a new one of the same name starts bare.
    ok(fake_illumos, "dladm", "delete-vnic", "job1_0")
    assert fails(fake_illumos, "dladm", "show-linkprop", "-c", "-o", "value", "-p",
                 "protection", "job1_0") == "dladm: link job1_0 is not valid: object not found"
    ok(fake_illumos, "dladm", "create-vnic", "-l", LINK, "job1_0")
    assert linkprops(fake_illumos, "job1_0") == "protection:\nallowed-ips:\n"


# -- the backend -----------------------------------------------------------------------------


async def test_each_job_gets_its_own_protected_address(fake_illumos: FakeIllumos,
                                                       tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", network=NETWORK))
    first, second = await asyncio.gather(backend.provision(spec("hosta-0001")),
                                         backend.provision(spec("hosta-0002")))
    state = fake_illumos.state()
    given = {}
    for vm in (first, second):
        vnic = vm.details["vnic"]
        props = state["links"][vnic]["props"]
        assert props["protection"] == ["mac-nospoof", "ip-nospoof"]
        (address,) = props["allowed-ips"]
        given[vm.name] = address
        # The guest is handed that address and its router by the brand.
        assert state["zones"][vm.name]["nets"] == [{
            "physical": vnic, "allowed-address": f"{address}/24", "defrouter": "10.77.0.1"}]
        assert vm.details["address"] == f"{address}/24"
    assert sorted(given.values()) == ["10.77.0.10", "10.77.0.11"]

    # The pool is exhausted: the third job fails clearly and leaves nothing behind.
    with pytest.raises(BackendError, match="every job address .* is taken"):
        await backend.provision(spec("hosta-0003"))
    assert sorted(fake_illumos.leaked()["zones"]) == ["hosta-0001", "hosta-0002"]

    await backend.destroy(first)
    assert first.details["vnic"] not in fake_illumos.state()["links"]
    third = await backend.provision(spec("hosta-0003"))  # reuses the freed address
    props = fake_illumos.state()["links"][third.details["vnic"]]["props"]
    assert props["allowed-ips"] == [given["hosta-0001"]]
    for vm in (second, third):
        await backend.destroy(vm)
    fake_illumos.assert_empty()
    assert list((tmp_path / "work" / "addresses").iterdir()) == []


async def test_a_crashed_jobs_address_is_freed_by_the_reaper(fake_illumos: FakeIllumos,
                                                             tmp_path: Path) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", network=NETWORK))
    await backend.provision(spec("hosta-0001"))
    restarted = BhyveBackend(backend.settings)  # a new process: it knows only the host's state
    assert await restarted.leftovers("hosta-") == ["hosta-0001"]
    await restarted.destroy_by_name("hosta-0001")
    fake_illumos.assert_empty()
    assert list((tmp_path / "work" / "addresses").iterdir()) == []


async def test_dhcp_jobs_get_mac_protection_and_a_warning(
        fake_illumos: FakeIllumos, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command"))
    with caplog.at_level(logging.WARNING, logger="orchestrator.backends.bhyve"):
        await backend.prepare()
    assert any("MAC spoofing only" in r.getMessage() for r in caplog.records)
    vm = await backend.provision(spec())
    assert linkprops(fake_illumos, vm.details["vnic"]) == "protection:mac-nospoof\nallowed-ips:\n"
    await backend.destroy(vm)
    unprotected = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command",
                                             network={"protection": False}))
    vm = await unprotected.provision(spec())
    assert "props" not in fake_illumos.state()["links"][vm.details["vnic"]]
    await unprotected.destroy(vm)
    fake_illumos.assert_empty()


async def test_prepare_writes_the_egress_rules(fake_illumos: FakeIllumos, tmp_path: Path) -> None:
    rules = tmp_path / "ipf" / "solstice-jobs.conf"
    network = {**NETWORK, "interface": "solsticehost0", "ipf_rules_file": str(rules),
               "egress": ["10.77.0.1:50051", "203.0.113.7:443", "udp:10.77.0.1:53"]}
    backend = BhyveBackend(make_settings(fake_illumos, tmp_path, zfs="command", network=network))
    await backend.prepare()
    assert rules.read_text().splitlines()[1:] == [
        "# jobs: 10.77.0.0/24 on solsticehost0",
        "pass in quick on solsticehost0 proto tcp from 10.77.0.0/24 to 10.77.0.1/32 port = 50051"
        " keep state",
        "pass in quick on solsticehost0 proto tcp from 10.77.0.0/24 to 203.0.113.7/32 port = 443"
        " keep state",
        "pass in quick on solsticehost0 proto udp from 10.77.0.0/24 to 10.77.0.1/32 port = 53"
        " keep state",
        "block in log quick on solsticehost0 from 10.77.0.0/24 to any"]
    assert rules.stat().st_mode & 0o777 == 0o600
    assert ipf_rules(backend.settings.network) == rules.read_text()


@pytest.mark.parametrize("bad, message", [
    ({"addresses": "10.77.0.10-10.77.0.20"}, "needs network.gateway"),
    ({"addresses": "10.77.0.20-10.77.0.10", "gateway": "10.77.0.1"}, "LAST is before FIRST"),
    ({"addresses": "10.77.0.x", "gateway": "10.77.0.1"}, "is not FIRST-LAST"),
    ({"egress": ["ci.example.org:443"]}, "is not \\[udp:\\]ADDRESS"),
    ({"egress": ["10.0.0.1:0"]}, "is not \\[udp:\\]ADDRESS"),
    ({"ipf_rules_file": "/etc/ipf/jobs.conf"}, "needs network.interface"),
    ({"protect": True}, "Extra inputs are not permitted"),
])
def test_bad_network_settings_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BhyveNetwork.model_validate(bad)
