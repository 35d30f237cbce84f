#!/usr/bin/env python3
"""Build (or find in the cache) the Debian golden image of the qemu backend.

    sudo python3 images/linux/build.py            # prints the image's JSON description
    sudo python3 images/linux/build.py --config   # prints a [orchestrator.qemu.labels.linux] TOML table

Only Debian's packages and PyPI are fetched, and nothing is mounted but /proc in the chroot:

1. root file system (cached per recipe): `debootstrap --variant=minbase` with systemd, python3
   and git; `linux-image-cloud-amd64` (its initramfs built in the chroot); a venv at
   /opt/solstice holding the project's dependencies, from wheels built on the host.
2. image (cached per recipe + runner sources): a copy of (1), the files under `rootfs/`
   (boot-time NoCloud reader, runner and network units), the project's own wheel installed
   into the venv, then `mkfs.ext4 -d` (fills the file system without mounting it) and
   `qemu-img convert -O qcow2`. The kernel and initrd are copied beside it for direct boot.

The cache lives in `$SOLSTICE_IMAGE_CACHE`, else `$XDG_CACHE_HOME/solstice/images`, else
`~/.cache/solstice/images`; a build holds a lock there, so concurrent callers wait for one
build and then share it. Progress goes to stderr, the result to stdout. Runs as root
(debootstrap and chroot need it). Only the standard library is used, so any python3 runs it.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OVERLAY = HERE / "rootfs"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = ["systemd-sysv", "udev", "kmod", "e2fsprogs", "python3", "python3-venv",
           "python3-yaml", "git", "ca-certificates", "bash"]
KERNEL = "linux-image-cloud-amd64"
VENV = "/opt/solstice"
FS_SIZE = "2G"
FS_LABEL = "root"
# A small initramfs (decompressed on every boot, slowly under emulation): just what mounts a
# virtio root; udev loads the rest from the root file system.
INITRD_MODULES = ["virtio_pci", "virtio_blk"]
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 systemd.show_status=1"
# Units a one-job machine does without; each costs boot time under emulation.
MASKED_UNITS = [
    "getty.target", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
    "fstrim.timer", "dpkg-db-backup.timer", "e2scrub_reap.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service", "dev-hugepages.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "sys-kernel-config.mount",
    "modprobe@fuse.service", "modprobe@dm_mod.service", "modprobe@loop.service",
    "modprobe@efi_pstore.service", "modprobe@configfs.service", "systemd-pstore.service",
]
# The sources of what runs inside the image; a change to any of them builds a new image.
RUNNER_SOURCES = ["common", "protos", "workflow_runner", "pyproject.toml", "setup.py"]
# Bump when the steps of stage 1 change in a way its inputs above do not show.
ROOTFS_RECIPE_VERSION = 2
KEEP_BUILDS = 2


def progress(message: str) -> None:
    print(f"[images/linux {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], *, what: str | None = None, **kwargs) -> None:
    """Run a build command, its output kept for the error; `what` names it in the progress."""
    started = time.monotonic()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-30:])
        raise SystemExit(f"images/linux: `{' '.join(argv)}` failed "
                         f"(exit {result.returncode}):\n{tail}")
    progress(f"  {what or ' '.join(argv[:2])} done in {time.monotonic() - started:.0f}s")


def cache_root() -> Path:
    if os.environ.get("SOLSTICE_IMAGE_CACHE"):
        return Path(os.environ["SOLSTICE_IMAGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "solstice" / "images"


def project_dependencies() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _hash_paths(digest: hashlib._Hash, paths: list[Path]) -> None:
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc" or path.name.endswith("_pb2.py") \
                    or path.name.endswith("_pb2_grpc.py") or path.name.endswith("_pb2.pyi"):
                continue  # generated at build time from the .proto files hashed here
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")


def rootfs_key() -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([ROOTFS_RECIPE_VERSION, SUITE, MIRROR, INCLUDE, KERNEL,
                              INITRD_MODULES, VENV, project_dependencies()]).encode())
    return digest.hexdigest()[:16]


def image_key() -> str:
    digest = hashlib.sha256(rootfs_key().encode())
    digest.update(json.dumps([FS_SIZE, FS_LABEL, KERNEL_APPEND]).encode())
    _hash_paths(digest, [Path(__file__).resolve(), OVERLAY] + [REPO / s for s in RUNNER_SOURCES])
    return digest.hexdigest()[:16]


def _prune(parent: Path, prefix: str, keep: Path) -> None:
    """Drop older builds of one kind, keeping the newest few (the cache must not grow forever)."""
    builds = sorted((p for p in parent.glob(prefix + "*") if p != keep and p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS - 1:]:
        progress(f"removing old build {old.name}")
        shutil.rmtree(old, ignore_errors=True)


def build_wheels(target: Path, *, project: bool) -> None:
    """Wheels on the host (PyPI reachable here, the guest's Python is the same 3.11 ABI).

    The project's own wheel is built from a copy holding only the runner's sources, so the
    build neither writes into the work tree nor packs services the image does not run.
    """
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(target)]
    if not project:
        run(pip + project_dependencies(), what="pip wheel (the project's dependencies)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*_pb2.py", "*_pb2_grpc.py",
                                      "*_pb2.pyi")
        for name in RUNNER_SOURCES + ["README.md"]:
            path = REPO / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=skip)
            else:
                shutil.copy(path, source / name)
        run(pip + ["--no-deps", str(source)], what="pip wheel (the project)")


def chroot(root: Path, *argv: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8", "HOME": "/root"}
    run(["chroot", str(root), *argv], env=env, what=" ".join(argv[:3]))


def build_rootfs(target: Path) -> None:
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    # Downloaded packages stay for the next rebuild (a new dependency, a new kernel).
    debs = target.parent / "debs"
    debs.mkdir(exist_ok=True)
    progress(f"debootstrap {SUITE} minbase into {rootfs} (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}",
         f"--cache-dir={debs.resolve()}", SUITE, str(rootfs), MIRROR])
    progress(f"installing {KERNEL} in the chroot")
    (rootfs / "etc/initramfs-tools/conf.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/initramfs-tools/conf.d/solstice").write_text("MODULES=list\n")
    with (rootfs / "etc/initramfs-tools/modules").open("a") as modules:
        modules.write("".join(f"{m}\n" for m in INITRD_MODULES))
    (rootfs / "proc").mkdir(exist_ok=True)
    run(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
    try:
        chroot(rootfs, "apt-get", "install", "-y", "-q", "--no-install-recommends", KERNEL)
    finally:
        subprocess.run(["umount", "-l", str(rootfs / "proc")], check=False)
    progress(f"creating {VENV} with the project's dependencies")
    chroot(rootfs, "python3", "-m", "venv", VENV)
    with tempfile.TemporaryDirectory(dir=rootfs / "tmp") as wheels:
        build_wheels(Path(wheels), project=False)
        inside = "/tmp/" + Path(wheels).name
        chroot(rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", inside,
               *project_dependencies())
    chroot(rootfs, "apt-get", "clean")
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
    work.rename(target)


def build_image(rootfs_dir: Path, target: Path) -> None:
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    progress("copying the root file system")
    run(["cp", "-a", "--reflink=auto", str(rootfs_dir / "rootfs"), str(rootfs)])
    progress("adding the boot-time files and the runner")
    run(["cp", "-a", "--no-preserve=ownership", f"{OVERLAY}/.", str(rootfs)])
    for script in ("solstice-bootstrap", "solstice-runner-boot"):
        (rootfs / "usr/local/sbin" / script).chmod(0o755)
    chroot(rootfs, "systemctl", "enable", "solstice-bootstrap.service", "solstice-runner.service",
           "systemd-networkd.service")
    chroot(rootfs, "systemctl", "mask", *MASKED_UNITS)
    chroot(rootfs, "passwd", "-l", "root")
    (rootfs / "etc/machine-id").write_text("")
    with tempfile.TemporaryDirectory(dir=rootfs / "tmp") as wheels:
        build_wheels(Path(wheels), project=True)
        inside = "/tmp/" + Path(wheels).name
        [wheel] = [p.name for p in Path(wheels).glob("*.whl")]
        chroot(rootfs, f"{VENV}/bin/pip", "install", "-q", "--no-index", "--no-deps",
               f"{inside}/{wheel}")
    chroot(rootfs, f"{VENV}/bin/solstice-runner", "--help")
    boot = rootfs / "boot"
    [kernel] = sorted(boot.glob("vmlinuz-*"))
    [initrd] = sorted(boot.glob("initrd.img-*"))
    shutil.copy(kernel, work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")
    progress(f"mkfs.ext4 -d ({FS_SIZE})")
    raw = work / "root.img"
    run(["mkfs.ext4", "-q", "-F", "-L", FS_LABEL, "-d", str(rootfs), str(raw), FS_SIZE])
    progress("qemu-img convert to qcow2")
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")])
    raw.unlink()
    shutil.rmtree(rootfs)
    (work / "image.json").write_text(json.dumps(describe(target), indent=2) + "\n")
    work.rename(target)


def describe(image_dir: Path) -> dict[str, str]:
    return {
        "image": str(image_dir / "base.qcow2"),
        "kernel": str(image_dir / "vmlinuz"),
        "initrd": str(image_dir / "initrd.img"),
        "append": KERNEL_APPEND,
    }


def ensure_image(cache: Path) -> dict[str, str]:
    """The image for the current recipe and runner sources, built if it is not cached."""
    cache.mkdir(parents=True, exist_ok=True)
    image_dir = cache / f"image-{image_key()}"
    if (image_dir / "image.json").is_file():
        return describe(image_dir)
    with open(cache / ".lock", "w") as lock:
        progress(f"waiting for the build lock in {cache}")
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (image_dir / "image.json").is_file():
            return describe(image_dir)
        if os.geteuid() != 0:
            raise SystemExit("images/linux: building the image needs root (debootstrap, chroot)")
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "chroot"):
            if shutil.which(tool) is None:
                raise SystemExit(f"images/linux: `{tool}` is missing; run scripts/system-packages.sh")
        started = time.monotonic()
        rootfs_dir = cache / f"rootfs-{rootfs_key()}"
        if rootfs_dir.is_dir():
            progress(f"reusing the root file system {rootfs_dir.name}")
        else:
            build_rootfs(rootfs_dir)
            _prune(cache, "rootfs-", rootfs_dir)
        os.utime(rootfs_dir)
        build_image(rootfs_dir, image_dir)
        _prune(cache, "image-", image_dir)
        progress(f"image {image_dir.name} ready in {time.monotonic() - started:.0f}s")
        return describe(image_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache directory")
    parser.add_argument("--config", action="store_true",
                        help="print a qemu backend label table instead of JSON")
    args = parser.parse_args()
    image = ensure_image(args.cache or cache_root())
    if args.config:
        print("[orchestrator.qemu.labels.linux]")
        for key, value in image.items():
            print(f"{key} = {json.dumps(value)}")
    else:
        print(json.dumps(image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
