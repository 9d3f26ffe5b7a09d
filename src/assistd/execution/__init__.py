"""Execution: the worker that claims runs, the run loop, the upstream client, stream events."""
