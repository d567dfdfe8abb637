"""The process and its edges: config, CLI, HTTP and gRPC front ends, metrics, lifecycle."""
