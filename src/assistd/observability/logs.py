"""Log set-up: one format for every line (assistd's and uvicorn's), text or JSON, and no secrets.

ASSISTD_LOG_FORMAT=json makes each line one JSON object: `time`, `level`, `logger`, `message`,
and the fields a line carries as `extra` (request_id, run_id, …).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The attributes every LogRecord has; anything else on a record came in through `extra`.
# uvicorn adds `color_message`, the same text with terminal colours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}
_QUIET = ("httpx", "httpx2", "openai", "httpcore", "httpcore2")  # a line per upstream request is too many


def _skip_unused_fields() -> None:
    """No format of ours shows a line's thread, process or source position: the logging
    module's documented switches ("Optimization" in its HOWTO) spare every line finding them,
    a good part of a line's cost, and there is a line per request."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the HOWTO's own advice for skipping the stack walk


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Redacting(logging.Formatter):
    """Wraps a formatter: every secret in the finished line becomes `***`, whatever logged it."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        # Longest first, so a key that contains another is hidden whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def configure(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Send every logger's lines to stderr in one format; uvicorn's loggers propagate here."""
    _skip_unused_fields()
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Redacting(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in _QUIET:
        logging.getLogger(name).setLevel(quiet)
