"""The stateful illumos fakes (`zfs`, `zonecfg`, `zoneadm`, `dladm`) as fixtures for backend tests."""
from tests.fakes.illumos.fixtures import fake_illumos, fake_libzfs_core

__all__ = ["fake_illumos", "fake_libzfs_core"]
