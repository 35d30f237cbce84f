"""deploy/: one systemd unit and one SMF manifest per service, pointing at the real entry points."""
from __future__ import annotations

import configparser
import tomllib
import xml.dom.minidom
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Operator and developer CLIs are run by hand, not as services.
SERVICES = sorted(name for name in tomllib.loads((ROOT / "pyproject.toml").read_text())
                  ["project"]["scripts"] if name.startswith("solstice-"))
# The order of a <service>'s children that service_bundle.dtd.1 requires.
SMF_ORDER = ["create_default_instance", "single_instance", "restarter", "dependency", "dependent",
             "method_context", "exec_method", "notification_parameters", "property_group",
             "instance", "stability", "template"]


def test_every_service_is_known() -> None:
    assert SERVICES == ["solstice-forge-integration", "solstice-github-integration",
                        "solstice-orchestrator", "solstice-runner"]


@pytest.mark.parametrize("service", SERVICES)
def test_systemd_unit(service: str) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "systemd" / f"{service}.service")
    assert unit["Service"]["ExecStart"].split()[0] == f"/opt/solstice/bin/{service}"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "Description" in unit["Unit"]


@pytest.mark.parametrize("service", SERVICES)
def test_smf_manifest(service: str) -> None:
    document = xml.dom.minidom.parse(str(ROOT / "deploy" / "smf" / f"{service}.xml"))
    assert document.doctype is not None and document.doctype.name == "service_bundle"
    (svc,) = document.getElementsByTagName("service")
    assert svc.getAttribute("name") == f"application/solstice/{service.removeprefix('solstice-')}"
    children = [n.tagName for n in svc.childNodes if n.nodeType == n.ELEMENT_NODE]
    assert children == sorted(children, key=SMF_ORDER.index), "children out of DTD order"
    start = [m for m in svc.getElementsByTagName("exec_method") if m.getAttribute("name") == "start"]
    assert start[0].getAttribute("exec").split()[0] == f"/opt/solstice/bin/{service}"
