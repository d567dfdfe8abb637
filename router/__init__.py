"""Traffic: which model version serves each request to an endpoint."""
