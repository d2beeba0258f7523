"""The one error type of the HTTP API, answered as one JSON shape by the server's middleware:
{"error": {"status": 413, "code": "too_large", "message": "what was wrong and what to do"}}."""
from __future__ import annotations


class ApiError(Exception):
    """An HTTP error with a machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body."""
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}
