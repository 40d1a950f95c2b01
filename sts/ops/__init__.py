"""Operating the broker: retention of audit records and issued-token rows, coalescing of
unauthenticated refusals, metrics and traces. Called by the app and the command line; calls ``store/``."""
