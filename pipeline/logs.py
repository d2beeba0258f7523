"""Structured logs: one JSON object per line on stdout, with camera id, never a credential.

stdout, as containers expect (`docker logs`, `kubectl logs`; systemd's journal takes both streams);
stderr is left to what the interpreter itself says when it dies. Nothing else of ours prints on
stdout in `run`, and on the GPU path native libraries' prints are kept off it (native_output)."""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove URL passwords and any known secret from a string."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, event, logger, then the record's fields."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these too from now on (a reloaded config may bring new passwords)."""
        self._secrets = tuple(sorted(set(self._secrets) | set(secrets), key=len, reverse=True))

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str), self._secrets)


class RateLimit(logging.Filter):
    """Lets the same message of the `prefix` loggers through at most once per `interval_s` (a
    library that logs every reconnect attempt during an outage must not flood the log). The same
    message means the same text: "Joined group ... (generation 7)" and "(generation 8)" both pass."""

    def __init__(self, prefix: str, interval_s: float = 10.0) -> None:
        super().__init__()
        self._prefix, self._interval = prefix, interval_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.getMessage())
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            return False
        if len(self._last) > 1000:  # bounded: forget old keys
            self._last.clear()
        self._last[key] = now
        return True


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every log record to stdout as scrubbed JSON lines, libraries' too, at `level`: with
    info, aiokafka's group events (joining, joined in generation N, elected leader, left), with
    debug its JoinGroup/SyncGroup/Heartbeat requests."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(secrets))
    handler.addFilter(RateLimit("aiokafka"))  # it logs every reconnect attempt of an outage
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # the root's level (it was held at warning)


def add_secrets(secrets: Iterable[str]) -> None:
    """Mask more secrets in every JSON log handler set up by `setup_logging`."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.add_secrets(secrets)


def log_event(logger: logging.Logger, level: int, event: str, **fields) -> None:
    """Log one event with structured fields (camera=..., reason=...)."""
    logger.log(level, event, extra={"fields": fields})
