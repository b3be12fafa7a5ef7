"""A fake deployment API: a real threaded HTTP server on 127.0.0.1 speaking the shape
the `http` provider expects (DESIGN.md, "Providers"), with in-memory state.

    with FakeDeployApi(token="t0ken") as api:
        api.fail_next(503, times=2)
        ... HttpProvider(ProviderConfig(..., config={"baseUrl": api.url}), ...)
        assert api.create_count[("dev", "chat")] == 1

`env_shape="list"` answers with each object's `env` as a list of `{name, value}` (a
common API shape) while accepting and storing the mapping the provider sends;
`id_prefix` is put before every new object's id. `global_names=True` keeps names
unique across environments, as some real APIs do: a POST of a name another
environment holds answers 409, and the lookup by name ignores the `environment` query
(it answers with whichever environment's object holds the name).

Faults (`fail_next`) are consumed one per request, in order: an HTTP status (with an
optional `Retry-After` and JSON body), "reset" (close the connection unanswered,
before handling), "lost" (handle the request, then close unanswered: the answer is
lost), "hang" (hold the request for `hang_seconds`, then close unanswered),
"drip-headers" / "drip-body" (answer one byte every 0.8 s, for ever: `fakes.slow`).

Standalone (for benchmarks): `python -m tests.fakes.deploy_api --port 0 --latency 0.05`
prints the URL on its first line and serves until interrupted; `--run-latency S` makes
each run (`POST .../run`) take S seconds more.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from .loopback import ThreadedServer
from .slow import MODES, drip

DEFAULT_PATHS: Mapping[str, str] = {
    "deployments": "/api/v1/deployments",
    "schedules": "/api/v1/schedules",
}
Fault = int | Literal["reset", "lost", "hang", "drip-headers", "drip-body"]
_SERVER_FIELDS = ("id", "createdAt", "updatedAt")


@dataclass
class Recorded:
    """One request as the server saw it (the Authorization header is never kept)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    authorized: bool


@dataclass
class _Fault:
    fault: Fault
    times: int
    retry_after: str | None = None
    body: Any = None
    method: str | None = None


@dataclass
class _Collection:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> object
    #: (environment, name) -> id; the environment is "" when names are global.
    by_name: dict[tuple[str, str], str] = field(default_factory=dict)


class FakeDeployApi(ThreadedServer):
    """Deployments and schedules by (environment, name); thread-safe."""

    def __init__(
        self,
        *,
        token: str | None = None,
        latency: float = 0.0,
        hang_seconds: float = 2.0,
        paths: Mapping[str, str] = DEFAULT_PATHS,
        host: str = "127.0.0.1",
        port: int = 0,
        env_shape: Literal["map", "list"] = "map",
        id_prefix: str = "",
        global_names: bool = False,
    ) -> None:
        super().__init__(host, port)
        self.token = token
        self.global_names = global_names
        self.env_shape = env_shape
        self.id_prefix = id_prefix
        #: Seconds every request takes before it is answered.
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.paths = {k: v.rstrip("/") for k, v in paths.items()}
        self.requests: list[Recorded] = []
        #: POSTs that created an object, by (environment, name), over all collections.
        self.create_count: Counter[tuple[str, str]] = Counter()
        self._collections = {k: _Collection() for k in self.paths}
        self._faults: deque[_Fault] = deque()
        self._ids = itertools.count(1)
        #: Every run asked for: (environment, name, input).
        self.runs: list[tuple[str, str, Any]] = []
        #: Seconds a run takes beyond `latency` (a model answering).
        self.run_latency = 0.0
        #: When set, a run is answered only once the event is set (a call under way).
        self.run_gate: threading.Event | None = None
        #: Set whenever a run arrives.
        self.run_arrived = threading.Event()
        #: When set, a create (a POST to a collection) is answered only once the event
        #: is set: a command held midway, its provider call under way.
        self.create_gate: threading.Event | None = None
        #: Set whenever a create arrives.
        self.create_arrived = threading.Event()

    # --- test controls ---------------------------------------------------------------

    def fail_next(
        self,
        fault: Fault,
        times: int = 1,
        *,
        retry_after: float | str | None = None,
        body: Any = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `times` requests (of `method`, if given) with `fault`."""
        ra = None if retry_after is None else str(retry_after)
        with self.lock:
            self._faults.append(_Fault(fault, times, ra, body, method))

    def objects(self, collection: str = "deployments") -> list[dict[str, Any]]:
        with self.lock:
            return [
                json.loads(json.dumps(o)) for o in self._collections[collection].objects.values()
            ]

    def _key(self, environment: str, name: str) -> tuple[str, str]:
        return ("" if self.global_names else environment, name)

    def _find(self, c: _Collection, environment: str, name: str) -> str | None:
        """The id of `environment`'s object called `name` (only that environment's)."""
        ident = c.by_name.get(self._key(environment, name))
        if ident is None or c.objects[ident]["environment"] != environment:
            return None
        return ident

    def get(self, collection: str, environment: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            c = self._collections[collection]
            ident = self._find(c, environment, name)
            return None if ident is None else json.loads(json.dumps(c.objects[ident]))

    def tamper(self, collection: str, environment: str, name: str, **fields: Any) -> None:
        """Change a live object behind the reconciler's back (for drift tests)."""
        with self.lock:
            c = self._collections[collection]
            ident = self._find(c, environment, name)
            assert ident is not None, f"no {name} in {environment}"
            c.objects[ident].update(fields)

    def remove(self, collection: str, environment: str, name: str) -> None:
        with self.lock:
            c = self._collections[collection]
            ident = self._find(c, environment, name)
            assert ident is not None, f"no {name} in {environment}"
            del c.objects[ident]
            del c.by_name[self._key(environment, name)]

    # --- the API -------------------------------------------------------------------

    def _take_fault(self, method: str) -> _Fault | None:
        with self.lock:
            for f in self._faults:
                if f.method is None or f.method == method:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in h.headers.items() if k.lower() != "authorization"}
        authorized = self.token is None or h.headers.get("Authorization") == f"Bearer {self.token}"
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests.append(Recorded(method, parts.path, query, headers, body, authorized))
        if self.latency:
            self._stopping.wait(self.latency)
        if method == "POST" and parts.path.rstrip("/") in self.paths.values():
            self.create_arrived.set()
            gate = self.create_gate
            if gate is not None:
                gate.wait(60)

        fault = self._take_fault(method)
        if fault is not None:
            if fault.fault == "reset":
                self._drop(h, reset=True)
                return
            if fault.fault in MODES:
                drip(h, in_body=fault.fault == "drip-body", stop=self._stopping)
                return
            if fault.fault == "hang":
                self._stopping.wait(self.hang_seconds)
                self._drop(h)
                return
            if isinstance(fault.fault, int):
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                payload = fault.body if fault.body is not None else {"error": "injected fault"}
                self._send(h, fault.fault, payload, extra)
                return

        if not authorized:
            self._send(h, 401, {"error": "missing or wrong bearer token"})
            return
        status, payload = self._route(method, parts.path, query, body)
        if self.env_shape == "list":
            payload = _env_as_list(payload)
        if fault is not None and fault.fault == "lost":
            self._drop(h)
            return
        self._send(h, status, payload)

    def _route(
        self, method: str, path: str, query: Mapping[str, str], body: Any
    ) -> tuple[int, Any]:
        for name, prefix in self.paths.items():
            if path == prefix or path.startswith(prefix + "/"):
                rest = [unquote(s) for s in path[len(prefix) :].split("/") if s]
                return self._collection(name, method, rest, query, body)
        return 404, {"error": f"no route for {path}"}

    def _collection(
        self, cname: str, method: str, rest: list[str], query: Mapping[str, str], body: Any
    ) -> tuple[int, Any]:
        now = datetime.now(UTC).isoformat()
        with self.lock:
            c = self._collections[cname]
            if not rest:
                if method == "GET":
                    env = query.get("environment")
                    items = [o for o in c.objects.values() if env in (None, o["environment"])]
                    return 200, {"items": items}
                if method == "POST":
                    problem = _invalid(body)
                    if problem:
                        return 422, {"error": problem}
                    key = self._key(body["environment"], body["name"])
                    if key in c.by_name:
                        return 409, {"error": f"{body['name']} already exists"}
                    ident = f"{self.id_prefix}{cname[:3]}-{next(self._ids)}"
                    obj = {**body, "id": ident, "createdAt": now, "updatedAt": now}
                    c.objects[ident] = obj
                    c.by_name[key] = ident
                    self.create_count[(body["environment"], body["name"])] += 1
                    return 201, obj
                return 405, {"error": "method not allowed"}
            if rest[0] == "name" and len(rest) == 2:
                if method != "GET":
                    return 405, {"error": "method not allowed"}
                env = query.get("environment")
                if env is None:
                    return 400, {"error": "the environment query parameter is required"}
                found = c.by_name.get(self._key(env, rest[1]))
                if found is None:
                    return 404, {"error": "not found"}
                return 200, c.objects[found]
            if len(rest) == 2 and rest[1] == "run" and cname == "deployments":
                return self._run(c, rest[0], method, body)
            if len(rest) != 1:
                return 404, {"error": "not found"}
            ident = rest[0]
            current = c.objects.get(ident)
            if current is None:
                return 404, {"error": "not found"}
            obj = current
            if method == "GET":
                return 200, obj
            if method == "PUT":
                problem = _invalid(body)
                if problem:
                    return 422, {"error": problem}
                key = self._key(body["environment"], body["name"])
                if c.by_name.get(key, ident) != ident:
                    return 409, {"error": f"{body['name']} already exists"}
                del c.by_name[self._key(obj["environment"], obj["name"])]
                body = {k: v for k, v in body.items() if k not in _SERVER_FIELDS}
                new = {**body, "id": ident, "createdAt": obj["createdAt"], "updatedAt": now}
                c.objects[ident] = new
                c.by_name[key] = ident
                return 200, new
            if method == "DELETE":
                del c.objects[ident]
                del c.by_name[self._key(obj["environment"], obj["name"])]
                return 204, None
            return 405, {"error": "method not allowed"}

    def _run(self, c: _Collection, ident: str, method: str, body: Any) -> tuple[int, Any]:
        """`POST .../deployments/{id}/run` (docs/providers.md): the answer is the
        deployment's `runOutput` when a test set one (`{input.*}` filled in), else the
        input echoed; `runFails` makes it answer 500 with that message."""
        if method != "POST":
            return 405, {"error": "method not allowed"}
        obj = c.objects.get(ident)
        if obj is None:
            return 404, {"error": "not found"}
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return 422, {"error": "`input` must be a JSON object"}
        if obj.get("suspended") is True:
            return 409, {"error": f"deployment {obj['name']} is suspended"}
        self.runs.append((obj["environment"], obj["name"], body["input"]))
        self.run_arrived.set()
        gate = self.run_gate
        if gate is not None or self.run_latency:
            self.lock.release()  # others are served meanwhile
            try:
                if self.run_latency:
                    self._stopping.wait(self.run_latency)
                if gate is not None:
                    gate.wait(60)
            finally:
                self.lock.acquire()
        if obj.get("runFails"):
            return 500, {"error": obj["runFails"]}
        template = obj.get("runOutput")
        output = (
            template.format(input=_Attrs(body["input"]))
            if isinstance(template, str)
            else {"echo": body["input"], "model": obj.get("model")}
        )
        words = len(json.dumps(body["input"]).split())
        return 200, {"output": output, "usage": {"inputTokens": words, "outputTokens": 7}}

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, payload: Any, headers: Mapping[str, str] = {}
    ) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            if data:
                h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            if data:
                h.wfile.write(data)
        except OSError:
            h.close_connection = True

    @staticmethod
    def _drop(h: BaseHTTPRequestHandler, *, reset: bool = False) -> None:
        """Close the connection without an answer (RST when `reset`)."""
        h.close_connection = True
        if reset:
            with contextlib.suppress(OSError):
                h.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )


class _Attrs:
    """`{input.name}` in a format string reads the input's `name`."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        return self._values.get(name, "")


def _env_as_list(payload: Any) -> Any:
    """An answer with every object's `env` mapping as `[{name, value}, ...]`."""
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        return {**payload, "items": [_env_as_list(o) for o in payload["items"]]}
    if isinstance(payload, dict) and isinstance(payload.get("env"), dict):
        return {**payload, "env": [{"name": k, "value": v} for k, v in payload["env"].items()]}
    return payload


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for k in ("name", "environment"):
        if not (isinstance(body.get(k), str) and body[k]):
            return f"`{k}` is required"
    return None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    p.add_argument("--token", default=None, help="require this bearer token")
    p.add_argument("--run-latency", type=float, default=0.0, help="seconds per run")
    args = p.parse_args(argv)
    api = FakeDeployApi(token=args.token, latency=args.latency, host=args.host, port=args.port)
    api.run_latency = args.run_latency
    api.start()
    print(api.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        api.stop()


if __name__ == "__main__":
    main()
