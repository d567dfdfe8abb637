"""Regenerate the Python code for inference.proto with grpcio-tools.

Run from a checkout after editing the .proto: ``python -m turnout.protos.generate``. It writes,
beside the .proto:

- ``inference.binpb``: the compiled descriptor, which ``inference_pb2`` loads;
- ``inference_pb2.pyi``: type stubs for the message classes;
- ``inference_pb2_grpc.py``: the service stub and servicer base.

``inference_pb2.py`` itself is hand-written (see its docstring for why).
"""

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
PROTO_NAME = "inference.proto"
GENERATED = ("inference.binpb", "inference_pb2.pyi", "inference_pb2_grpc.py")
_PACKAGE_PATH = Path("turnout", "protos")


def generate(out_dir: Path) -> None:
    """Compile ``inference.proto`` and write the generated files into ``out_dir``."""
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        # Compiling from a copy under turnout/protos/ gives the generated code absolute
        # imports of turnout.protos, whatever the checkout is called.
        source = root / _PACKAGE_PATH / PROTO_NAME
        source.parent.mkdir(parents=True)
        shutil.copyfile(PROTO_DIR / PROTO_NAME, source)
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={root}",
                f"--pyi_out={root}",
                f"--grpc_python_out={root}",
                f"--descriptor_set_out={root / _PACKAGE_PATH / GENERATED[0]}",
                str(_PACKAGE_PATH / PROTO_NAME),
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed with status {status}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(root / _PACKAGE_PATH / name, out_dir / name)


if __name__ == "__main__":
    generate(PROTO_DIR)
    sys.stdout.write(f"regenerated {', '.join(GENERATED)} in {PROTO_DIR}\n")
