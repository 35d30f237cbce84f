"""The exception classes of OpenZFS pyzfs (`libzfs_core.exceptions`) that the fake raises.

Same names, bases, `errno`/`message`/`name` attributes and `__str__` as pyzfs, so code written
against the fake handles the real module the same way.
"""
import errno as _errno


class ZFSError(Exception):
    errno = None
    message = None
    name = None

    def __str__(self):
        if self.name is not None:
            return f"[Errno {self.errno}] {self.message}: '{self.name}'"
        return f"[Errno {self.errno}] {self.message}"


class ZFSGenericError(ZFSError):
    def __init__(self, errno, name, message):
        self.errno = errno
        self.message = message
        self.name = name


class MultipleOperationsFailure(ZFSError):
    def __init__(self, errors, suppressed_count):
        self.errno = errors[0].errno
        self.errors = errors
        self.suppressed_count = suppressed_count

    def __str__(self):
        return (f"{ZFSError.__str__(self)}, {len(self.errors)} errors included, "
                f"{self.suppressed_count} suppressed")


class DatasetNotFound(ZFSError):
    errno = _errno.ENOENT
    message = "Dataset not found"

    def __init__(self, name):
        self.name = name


class DatasetExists(ZFSError):
    errno = _errno.EEXIST
    message = "Dataset already exists"

    def __init__(self, name):
        self.name = name


class FilesystemExists(DatasetExists):
    errno = _errno.EEXIST
    message = "Filesystem already exists"

    def __init__(self, name):
        self.name = name


class FilesystemNotFound(DatasetNotFound):
    errno = _errno.ENOENT
    message = "Filesystem not found"

    def __init__(self, name):
        self.name = name


class ParentNotFound(ZFSError):
    errno = _errno.ENOENT
    message = "Parent not found"

    def __init__(self, name):
        self.name = name


class SnapshotExists(DatasetExists):
    errno = _errno.EEXIST
    message = "Snapshot already exists"

    def __init__(self, name):
        self.name = name


class SnapshotNotFound(DatasetNotFound):
    errno = _errno.ENOENT
    message = "Snapshot not found"

    def __init__(self, name):
        self.name = name


class SnapshotIsCloned(ZFSError):
    errno = _errno.EEXIST
    message = "Snapshot is cloned"

    def __init__(self, name):
        self.name = name


class DatasetBusy(ZFSError):
    errno = _errno.EBUSY
    message = "Dataset is busy"

    def __init__(self, name):
        self.name = name


class NameTooLong(ZFSError):
    errno = _errno.ENAMETOOLONG
    message = "Dataset name is too long"

    def __init__(self, name):
        self.name = name


class NameInvalid(ZFSError):
    errno = _errno.EINVAL
    message = "Invalid name"

    def __init__(self, name):
        self.name = name


class SnapshotNameInvalid(NameInvalid):
    errno = _errno.EINVAL
    message = "Invalid name for snapshot"

    def __init__(self, name):
        self.name = name


class FilesystemNameInvalid(NameInvalid):
    errno = _errno.EINVAL
    message = "Invalid name for filesystem or volume"

    def __init__(self, name):
        self.name = name


class PropertyInvalid(ZFSError):
    errno = _errno.EINVAL
    message = "Invalid property or property value"

    def __init__(self, name):
        self.name = name


class PoolsDiffer(ZFSError):
    errno = _errno.EXDEV
    message = "Source and target belong to different pools"

    def __init__(self, name):
        self.name = name


class WrongParent(ZFSError):
    errno = _errno.EINVAL
    message = "Parent dataset is not a filesystem"

    def __init__(self, name):
        self.name = name


class SnapshotFailure(MultipleOperationsFailure):
    message = "Creation of snapshot(s) failed for one or more reasons"


class SnapshotDestructionFailure(MultipleOperationsFailure):
    message = "Destruction of snapshot(s) failed for one or more reasons"
