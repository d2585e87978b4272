"""The request lines werkzeug logs under `serve --dev` and `up`: the path, never the query."""

from __future__ import annotations

from werkzeug.serving import WSGIRequestHandler


class PathOnlyRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, whose INFO line per request leaves the query string out.

    A number whose SMS URL is set to HTTP GET in the Twilio console sends each text as
    `GET /sms?From=%2B44+7911+123456&Body=…`: the line would hold the texter's words, and a
    number whose spaces the form encoding turned into `+` no longer reads as one. phischer
    logs what became of each text in its own line, number masked; this one says "?…".
    """

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Log the request as werkzeug does, its query shown as `?…`."""
        full = self.path
        path, query = full.split("?", 1) if "?" in full else (full, None)
        self.path = path if query is None else f"{path}?…"
        try:
            super().log_request(code, size)
        finally:
            self.path = full  # the request is still being handled
