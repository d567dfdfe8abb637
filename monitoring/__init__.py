"""Drift monitoring: live traffic sampled off the hot path, compared window by window with a
reference profile, and the statistics written to sinks."""
