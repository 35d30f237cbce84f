"""images/illumos cannot run here (no illumos); check what can be: the files parse, the zone
the builder configures uses documented bhyve attributes, the README's config loads."""
from __future__ import annotations

import py_compile
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from orchestrator.backends.bhyve import load_bhyve_settings
from tests.fakes.illumos import fakeillumos

IMAGES = Path(__file__).resolve().parents[2] / "images" / "illumos"


def test_scripts_parse(tmp_path: Path) -> None:
    subprocess.run(["bash", "-n", str(IMAGES / "build-golden.sh")], check=True)
    subprocess.run(["sh", "-n", str(IMAGES / "guest-setup.sh")], check=True)
    py_compile.compile(str(IMAGES / "files" / "solstice-bootstrap"), cfile=str(tmp_path / "b.pyc"),
                       doraise=True)


def test_smf_manifest_is_well_formed() -> None:
    root = ET.parse(IMAGES / "files" / "solstice-bootstrap.xml").getroot()
    service = root.find("service")
    assert service is not None and service.get("name") == "application/solstice/bootstrap"
    start = service.find("exec_method[@name='start']")
    assert start is not None and start.get("exec") == "/opt/solstice/libexec/solstice-bootstrap"


def test_builder_zone_uses_documented_attributes() -> None:
    script = (IMAGES / "build-golden.sh").read_text()
    attrs = re.findall(r"add attr\nset name=(\S+)\n", script)
    assert set(attrs) == {"bootdisk", "ram", "vcpus", "cloud-init", "sshkey"}
    assert all(fakeillumos.bhyve_attribute_known(a) for a in attrs)


def test_readme_configuration_loads(tmp_path: Path) -> None:
    readme = (IMAGES / "README.md").read_text()
    [block] = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[orchestrator.bhyve]" in b]
    path = tmp_path / "solstice.toml"
    path.write_text(block)
    settings = load_bhyve_settings(path, environ={})
    assert settings.labels["omnios"].attrs == {"bootrom": "BHYVE_RELEASE"}
    assert settings.link == "solstice0"
