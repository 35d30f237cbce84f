"""Clone cost against image size, and time from provision to runner connected (qemu backend).

    .venv/bin/python bench/clone.py [--reps 60] [--boots 1] [--no-boot]

1. Two sparse qcow2 golden images, 1 GiB and 20 GiB, each with the same 64 MiB of data spread
   evenly over its whole range (so the 20 GiB image's tables span 20 GiB). The qemu backend's
   `provision` (a per-job `qemu-img create -f qcow2 -b BASE -F qcow2` overlay plus its
   directory) runs `--reps` times per image, interleaved; prints the medians and the ratio
   20 GiB / 1 GiB (goal <= 1.2x: clones are O(1)).
2. The Debian golden image (images/linux/build.py, built if not cached) booted by the backend
   under software emulation, and under KVM when KVM runs guests here: seconds from
   `provision` to the runner's first gRPC call (GetJob) on a loopback server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.backends.base import Resources, RunnerBootstrap, VMSpec  # noqa: E402
from orchestrator.backends.qemu import QemuBackend, QemuLabel, QemuSettings, probe_kvm  # noqa: E402
from protos import runner_pb2_grpc  # noqa: E402

GIB = 1024**3
DATA_CHUNKS = 16
CHUNK = "4M"


def make_golden(path: Path, size_gib: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_gib}G"], check=True)
    step = size_gib * GIB // DATA_CHUNKS
    writes = []
    for i in range(DATA_CHUNKS):
        writes += ["-c", f"write -P {0x10 + i} {i * step} {CHUNK}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *writes, str(path)], check=True,
                   stdout=subprocess.DEVNULL)


async def time_overlays(reps: int) -> dict[int, list[float]]:
    times: dict[int, list[float]] = {1: [], 20: []}
    with tempfile.TemporaryDirectory(prefix="solstice-bench-clone-") as tmp:
        root = Path(tmp)
        kernel = root / "vmlinuz"
        kernel.write_bytes(b"unused: nothing boots in this part")
        labels = {}
        for size in times:
            golden = root / f"golden-{size}G.qcow2"
            make_golden(golden, size)
            labels[f"g{size}"] = QemuLabel(image=golden, kernel=kernel)
        backend = QemuBackend(QemuSettings(state_dir=root / "vms", labels=labels, accel="tcg"))
        for size in times:  # warm-up: the backend reads each image's size once
            vm = await backend.provision(VMSpec(name=f"warm-{size}", job_id="w", label=f"g{size}",
                                                image=f"g{size}", resources=Resources(disk_gb=1)))
            await backend.destroy(vm)
        for rep in range(reps):
            for size in (times if rep % 2 == 0 else reversed(list(times))):
                spec = VMSpec(name=f"bench-{size}-{rep}", job_id=str(rep), label=f"g{size}",
                              image=f"g{size}", resources=Resources(disk_gb=1))
                started = time.perf_counter()
                vm = await backend.provision(spec)
                times[size].append(time.perf_counter() - started)
                await backend.destroy(vm)
    return times


class _FirstCall(runner_pb2_grpc.RunnerServicer):
    """Records when the runner calls in, then refuses it (the VM powers off)."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def GetJob(self, request, context):
        self.called.set()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "benchmark: no job")


async def time_boot(image: QemuLabel, accel: str, timeout: float) -> float | None:
    servicer = _FirstCall()
    server = grpc.aio.server()
    runner_pb2_grpc.add_RunnerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with tempfile.TemporaryDirectory(prefix="solstice-bench-boot-") as tmp:
        backend = QemuBackend(QemuSettings(state_dir=Path(tmp), labels={"linux": image},
                                           accel=accel))
        spec = VMSpec(name="bench-boot", job_id="bench", label="linux", image="linux",
                      resources=Resources(vcpus=2, ram_mb=1024, disk_gb=4))
        started = time.perf_counter()
        vm = await backend.provision(spec)
        try:
            await backend.start(vm, RunnerBootstrap(f"127.0.0.1:{port}", "bench", "bench"))
            exited = asyncio.ensure_future(backend.wait_exit(vm))
            called = asyncio.ensure_future(servicer.called.wait())
            done, _ = await asyncio.wait({exited, called}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            elapsed = time.perf_counter() - started
            exited.cancel()
            if called not in done:
                why = exited.result() if exited in done else f"no call within {timeout:g} s"
                print(f"  {accel}: the runner never called in ({why})")
                return None
            return elapsed
        finally:
            await backend.destroy(vm)
            await server.stop(0)


def build_image() -> QemuLabel:
    built = subprocess.run([sys.executable, str(REPO / "images/linux/build.py")],
                           stdout=subprocess.PIPE, text=True, check=True)
    return QemuLabel(**json.loads(built.stdout))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=60, help="overlays per image size")
    parser.add_argument("--boots", type=int, default=1, help="VM boots per accelerator")
    parser.add_argument("--no-boot", action="store_true", help="only the clone part")
    parser.add_argument("--boot-timeout", type=float, default=600.0)
    args = parser.parse_args()

    times = await time_overlays(args.reps)
    medians = {size: statistics.median(t) * 1000 for size, t in times.items()}
    print(f"overlay clone (backend provision), median of {args.reps}:")
    for size, ms in medians.items():
        print(f"  {size:>2} GiB golden image: {ms:7.2f} ms  (p90 "
              f"{statistics.quantiles(times[size], n=10)[-1] * 1000:.2f} ms)")
    print(f"  ratio 20 GiB / 1 GiB: {medians[20] / medians[1]:.2f}x  (goal <= 1.2x)")

    if args.no_boot:
        return
    image = build_image()
    kvm = await probe_kvm("qemu-system-x86_64", timeout=20)
    accels = ["tcg"] + (["kvm"] if kvm else [])
    print("provision -> runner connected (first GetJob), 2 vCPU / 1 GiB:")
    for accel in accels:
        for _ in range(args.boots):
            elapsed = await time_boot(image, accel, args.boot_timeout)
            if elapsed is not None:
                label = "software emulation (TCG)" if accel == "tcg" else "KVM"
                print(f"  {label}: {elapsed:.1f} s")
    if not kvm:
        print("  KVM: not measured; /dev/kvm does not run guests on this host (probe failed)")


if __name__ == "__main__":
    asyncio.run(main())
