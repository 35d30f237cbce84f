"""NoCloud seed images: the cloud-init data a VM reads from a volume labelled `cidata`.

The qemu backend attaches one per job as a read-only disk. It is an ISO 9660 image with Rock
Ridge and Joliet names, built in-process with pycdlib: the same layout `genisoimage -volid
cidata -joliet -rock user-data meta-data` makes, which both cloud-init and the golden image's
own reader (`images/linux/rootfs/usr/local/sbin/solstice-bootstrap`) accept.
"""
from __future__ import annotations

import io
from pathlib import Path

import pycdlib

SEED_LABEL = "cidata"
USER_DATA = "user-data"
META_DATA = "meta-data"
NETWORK_CONFIG = "network-config"


def _iso_name(name: str) -> str:
    """The plain ISO 9660 name (level 1: 8.3, upper case) under which a file is stored too."""
    stem = "".join(c for c in name.upper() if c.isalnum())[:8]
    return f"/{stem}.;1"


def write_seed(path: Path, *, user_data: str, meta_data: str,
               network_config: str | None = None) -> None:
    """Write a NoCloud seed ISO holding `user-data`, `meta-data` (and `network-config`)."""
    files = {USER_DATA: user_data, META_DATA: meta_data}
    if network_config is not None:
        files[NETWORK_CONFIG] = network_config
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name, text in files.items():
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), _iso_name(name), rr_name=name,
                       joliet_path=f"/{name}")
        tmp = path.with_name(path.name + ".tmp")
        iso.write(str(tmp))
        tmp.rename(path)
    finally:
        iso.close()
