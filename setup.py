"""Generates the gRPC modules from protos/*.proto at build time, so `pip install` alone
(editable or not) leaves `protos.runner_pb2` and friends importable."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for proto in sorted((ROOT / "protos").glob("*.proto")):
        rel = proto.relative_to(ROOT).as_posix()
        code = protoc.main(
            ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}",
             f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", rel]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {rel}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtos})
