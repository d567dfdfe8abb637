"""Message classes of ``turnout.proto`` (see ``descriptors.py`` for how and why)."""

from turnout.protos.descriptors import build_module

DESCRIPTOR = build_module(__name__, "turnout.binpb", globals())
