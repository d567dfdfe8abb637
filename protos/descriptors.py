"""Building message classes from a compiled descriptor in a descriptor pool of Turnout's own.

grpcio-tools' generated ``_pb2`` modules register their messages in protobuf's process-wide
default pool. Triton's client library registers the inference protocol's names there too
(package ``inference``, as the wire protocol requires), and the pool refuses a second definition
of a name, so the two could not be imported into one process. Building from the compiled
descriptor (``NAME.binpb``, written by ``generate.py``) in a private pool keeps the generated API,
typed by the generated ``NAME_pb2.pyi``, without the clash.
"""

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.internal import builder


def build_module(module_name: str, descriptor_file: str, namespace: dict[str, Any]) -> Any:
    """Define the messages of ``descriptor_file`` in ``namespace`` (a module's globals) as
    generated code would; returns the file descriptor."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files(__package__).joinpath(descriptor_file).read_bytes()
    )
    pool = descriptor_pool.DescriptorPool()
    descriptor = pool.AddSerializedFile(files.file[0].SerializeToString())
    builder.BuildMessageAndEnumDescriptors(descriptor, namespace)
    builder.BuildTopDescriptorsAndMessages(descriptor, module_name, namespace)
    return descriptor
