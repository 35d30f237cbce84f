"""A fake of OpenZFS's `libzfs_core` Python bindings (pyzfs) over the fake illumos state.

Tests put this package in `sys.modules["libzfs_core"]`. It applies the very rules of the fake
`zfs` executable (`fakeillumos`) to the same state file, so the `libzfs_core` path and the
`zfs` command path of the backend meet the same world. Like pyzfs, names are `bytes` (a `str`
is a TypeError, as cffi would raise) and failures are `exceptions.ZFSError` subclasses.
"""
import errno as _errno

from tests.fakes.illumos import fakeillumos as _fake

from . import exceptions


def _name(value, what="name"):
    if not isinstance(value, bytes):
        raise TypeError(f"initializer for ctype 'char *' must be a bytes, not {type(value).__name__} ({what})")
    return value.decode()


def _props(props):
    out = {}
    for key, value in (props or {}).items():
        key = _name(key, "property name")
        out[key] = value.decode() if isinstance(value, bytes) else str(value)
    return out


_CLONE_ERRORS = {
    "exists": exceptions.FilesystemExists,
    "notfound": exceptions.DatasetNotFound,
    "parent_missing": exceptions.DatasetNotFound,
    "invalid_name": exceptions.FilesystemNameInvalid,
    "too_long": exceptions.NameTooLong,
    "invalid_prop": exceptions.PropertyInvalid,
    "pools_differ": exceptions.PoolsDiffer,
    "wrong_parent": exceptions.WrongParent,
}


def lzc_exists(name):
    with _fake.locked_state() as state:
        return _name(name) in state["datasets"]


def lzc_create(name, ds_type="zfs", props=None, key=None):
    props = _props(props)
    volsize = props.pop("volsize", None)
    if ds_type == "zvol" and volsize is None:
        raise exceptions.PropertyInvalid(name)
    try:
        with _fake.locked_state() as state:
            _fake.zfs_create(state, _name(name), volsize=volsize if ds_type == "zvol" else None,
                             props=props)
    except _fake.ToolError as exc:
        raise _CLONE_ERRORS.get(exc.kind, exceptions.ParentNotFound)(name) from None


def lzc_snapshot(snaps, props=None):
    failures = []
    with _fake.locked_state() as state:
        for snap in snaps:
            try:
                _fake.zfs_snapshot(state, _name(snap))
            except _fake.ToolError as exc:
                cls = {"exists": exceptions.SnapshotExists, "notfound": exceptions.FilesystemNotFound,
                       "too_long": exceptions.NameTooLong}.get(exc.kind, exceptions.SnapshotNameInvalid)
                failures.append(cls(snap))
        if failures:
            # All or nothing, like the ioctl: leave the state unchanged.
            for snap in snaps:
                if not any(f.name == snap for f in failures):
                    state["datasets"].pop(snap.decode(), None)
    if failures:
        raise exceptions.SnapshotFailure(failures, 0)


lzc_snap = lzc_snapshot


def lzc_clone(name, origin, props=None):
    props = _props(props)
    try:
        with _fake.locked_state() as state:
            _fake.zfs_clone(state, _name(origin, "origin"), _name(name), props)
    except _fake.ToolError as exc:
        if exc.kind == "invalid_name" and exc.name == origin.decode():
            raise exceptions.SnapshotNameInvalid(origin) from None
        # pyzfs names the clone even when the origin is missing (the ioctl cannot tell).
        raise _CLONE_ERRORS.get(exc.kind, exceptions.DatasetNotFound)(name) from None


def lzc_destroy(name):
    text = _name(name)
    if "@" in text:
        raise exceptions.FilesystemNameInvalid(name)
    try:
        with _fake.locked_state() as state:
            _fake.zfs_destroy(state, text)
    except _fake.ToolError as exc:
        if exc.kind == "notfound":
            raise exceptions.FilesystemNotFound(name) from None
        if exc.kind == "busy":
            raise exceptions.DatasetBusy(name) from None
        if exc.kind == "has_children":
            raise exceptions.ZFSGenericError(_errno.EEXIST, name, "Dataset has snapshots or children") from None
        raise exceptions.ZFSGenericError(_errno.EINVAL, name, exc.message) from None


def lzc_destroy_snaps(snaps, defer):
    failures = []
    with _fake.locked_state() as state:
        for snap in snaps:
            text = _name(snap)
            if text not in state["datasets"]:
                continue  # pyzfs: snapshots that do not exist are silently ignored
            try:
                _fake.zfs_destroy(state, text)
            except _fake.ToolError as exc:
                if exc.kind == "has_clones" and defer:
                    state["datasets"][text]["props"]["defer_destroy"] = "on"
                    continue
                failures.append(exceptions.SnapshotIsCloned(snap) if exc.kind == "has_clones"
                                else exceptions.ZFSGenericError(_errno.EINVAL, snap, exc.message))
        if failures:
            raise exceptions.SnapshotDestructionFailure(failures, 0)
