"""A small synchronous client for the control plane's REST API, used by the CLI."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:15000"


class ApiError(Exception):
    """The server answered with an error; `message` is what to show the user."""

    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None):
        self.status = status
        self.message = message
        self.details = details or []
        super().__init__(message)


@dataclass
class Client:
    server: str = DEFAULT_SERVER
    token: str | None = None
    timeout: float = 10.0

    @staticmethod
    def from_settings(server: str | None, token_file: str | None) -> Client:
        server = normalize_server(server or os.environ.get("GOSSAMER_SERVER") or DEFAULT_SERVER)
        token = None
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as err:
                raise ApiError(0, f"cannot read token file {token_file}: {err.strerror}") from err
        else:
            # Stripped: `GOSSAMER_TOKEN="$(cat file)"` is clean, a pasted token may not be.
            token = os.environ.get("GOSSAMER_TOKEN", "").strip() or None
        return Client(server, token)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as err:
            raise _api_error(err) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise self._unreachable(err) from None
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode(errors="replace")

    @property
    def _not_api(self) -> str:
        return (
            "is it the control plane's API address (its --api, default 127.0.0.1:15000), "
            "not the discovery port? Set --server or GOSSAMER_SERVER"
        )

    def _unreachable(self, err: BaseException) -> ApiError:
        """What a failure below HTTP means to the user, without a traceback."""
        if isinstance(err, TimeoutError) or "timed out" in str(err):
            return ApiError(0, f"the control plane at {self.server} did not answer in time")
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        # Something answered, but not HTTP as the API speaks it (the discovery port's
        # TLS, another service): said apart from nothing answering at all. urllib wraps
        # some of these (RemoteDisconnected) in a URLError and not others (BadStatusLine).
        spoke_otherwise = isinstance(
            reason, http.client.HTTPException | ConnectionResetError | ssl.SSLError
        )
        if isinstance(reason, OSError) and not spoke_otherwise:
            return ApiError(
                0,
                f"cannot reach the control plane at {self.server} ({reason}); "
                "is `gossamer control-plane` running? Set --server or GOSSAMER_SERVER",
            )
        return ApiError(
            0,
            f"{self.server} did not answer as the control plane's API "
            f"({type(reason).__name__}: {reason or 'connection closed'}); {self._not_api}",
        )

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def stream(self, path: str, query: dict[str, str]) -> Iterator[Any]:
        """GET a stream of JSON lines (`/v1/tap`, `/v1/watch`): the request is made now
        (a watch is open from here on), the lines are read as the iterator is."""
        url = self.server + path + "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/x-ndjson"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, method="GET", headers=headers)
        try:
            # No read timeout: a quiet service sends nothing for as long as it is quiet.
            resp = urllib.request.urlopen(req, timeout=None)
        except urllib.error.HTTPError as err:
            raise _api_error(err) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            raise self._unreachable(err) from None
        return self._lines(resp)

    def _lines(self, resp: Any) -> Iterator[Any]:
        with resp:
            try:
                for raw in resp:
                    line = raw.strip()
                    if line:
                        yield json.loads(line)
            except (http.client.HTTPException, OSError, ValueError) as err:
                raise ApiError(
                    0,
                    f"the control plane at {self.server} broke off the stream "
                    f"({type(err).__name__}); is it still running?",
                ) from None


def normalize_server(server: str) -> str:
    """`127.0.0.1:15000`, `localhost:15000` or a URL → a URL the client can open."""
    server = server.strip().rstrip("/")
    if "://" not in server:
        server = "http://" + server
    parsed = urllib.parse.urlsplit(server)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ApiError(
            0,
            f"--server {server!r}: expected http://HOST:PORT, https://HOST:PORT or HOST:PORT",
        )
    return server


def _api_error(err: urllib.error.HTTPError) -> ApiError:
    raw = err.read()
    try:
        payload = json.loads(raw)["error"]
        return ApiError(err.code, payload.get("message", err.reason), payload.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(err.code, f"{err.code} {err.reason}: {raw[:200].decode(errors='replace')}")
