"""Regenerate the Python code for the .proto files with grpcio-tools.

Run from a checkout after editing a .proto: ``python -m turnout.protos.generate``. For each
``NAME.proto`` it writes, beside the .proto:

- ``NAME.binpb``: the compiled descriptor, which ``NAME_pb2`` loads;
- ``NAME_pb2.pyi``: type stubs for the message classes;
- ``NAME_pb2_grpc.py``: the service stub and servicer base.

``NAME_pb2.py`` itself is hand-written (see ``descriptors.py`` for why).
"""

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
PROTOS = ("inference", "turnout")
_PACKAGE_PATH = Path("turnout", "protos")


def generated_files(name: str) -> tuple[str, str, str]:
    """The files generated for ``NAME.proto``."""
    return (f"{name}.binpb", f"{name}_pb2.pyi", f"{name}_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Compile every .proto and write the generated files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in PROTOS:
        _generate(name, out_dir)


def _generate(name: str, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        # Compiling from a copy under turnout/protos/ gives the generated code absolute
        # imports of turnout.protos, whatever the checkout is called.
        source = root / _PACKAGE_PATH / f"{name}.proto"
        source.parent.mkdir(parents=True)
        shutil.copyfile(PROTO_DIR / f"{name}.proto", source)
        descriptor, stubs, services = generated_files(name)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={root}",
                f"--pyi_out={root}",
                f"--grpc_python_out={root}",
                f"--descriptor_set_out={root / _PACKAGE_PATH / descriptor}",
                str(_PACKAGE_PATH / f"{name}.proto"),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {name}.proto with status {status}")
        for generated in (descriptor, stubs, services):
            shutil.copyfile(root / _PACKAGE_PATH / generated, out_dir / generated)


if __name__ == "__main__":
    generate(PROTO_DIR)
    sys.stdout.write(f"regenerated the code of {', '.join(PROTOS)} in {PROTO_DIR}\n")
