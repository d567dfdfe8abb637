"""The wire schema: inference.proto and the Python code grpcio-tools generates from it."""
