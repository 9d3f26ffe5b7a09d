"""What an operator sees: logs, Prometheus metrics, OpenTelemetry traces.

The HTTP and execution layers call in here at a few points (a request, a run's start and end,
an upstream call, a tool call); nothing in here imports them.
"""
