"""Message classes of ``inference.proto``, built in a descriptor pool of Turnout's own.

grpcio-tools would register these messages in protobuf's process-wide default pool. Triton's
client library registers the same names (package ``inference``, as the wire protocol requires)
there too, and the pool refuses a second definition of a name, so the two could not be imported
into one process. Building from the compiled descriptor (``inference.binpb``, written by
``generate.py``) in a private pool keeps the generated API, typed by ``inference_pb2.pyi``, without
the clash.
"""

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.internal import builder

_POOL = descriptor_pool.DescriptorPool()
_DESCRIPTORS = descriptor_pb2.FileDescriptorSet.FromString(
    resources.files(__package__).joinpath("inference.binpb").read_bytes()
)
DESCRIPTOR = _POOL.AddSerializedFile(_DESCRIPTORS.file[0].SerializeToString())
builder.BuildMessageAndEnumDescriptors(DESCRIPTOR, globals())
builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, __name__, globals())
