"""The HTTP/REST front end: V2 JSON, the binary tensor data extension, metadata, health, metrics."""
