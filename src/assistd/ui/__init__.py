"""The web console: static pages served at `/` that call the public `/v1` API like any client."""
