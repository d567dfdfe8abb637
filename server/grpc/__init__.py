"""The gRPC front end: Triton's and KServe's GRPCInferenceService on grpc.aio."""
