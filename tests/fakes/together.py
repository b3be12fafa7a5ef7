"""A Together AI dedicated-endpoints stand-in on 127.0.0.1, in the shapes of Together's
OpenAPI description (createEndpoint, getEndpoint, updateEndpoint, deleteEndpoint,
listEndpoints) and together-py's `DedicatedEndpoint`:

    GET    /v1/endpoints?type=dedicated&mine=true  {object: list, data: [ListEndpoint]}
    POST   /v1/endpoints        model, hardware, autoscaling{min_replicas, max_replicas}
                                required; display_name, state (STARTED|STOPPED),
                                inactive_timeout, availability_zone,
                                disable_speculative_decoding optional → 200, PENDING
    GET    /v1/endpoints/{id}   200 | 404
    PATCH  /v1/endpoints/{id}   display_name, state, autoscaling (both bounds),
                                inactive_timeout; model and hardware are refused
    DELETE /v1/endpoints/{id}   204
    POST   /v1/chat/completions {model: <an endpoint's name>, messages, ...} → the
                                OpenAI shape {id, object: chat.completion, model, choices:
                                [{index, message: {role, content}, finish_reason}], usage:
                                {prompt_tokens, completion_tokens, total_tokens}}

Every POST makes a new endpoint with a new id. `state` moves one step per GET: PENDING
→ STARTING → … → STARTED over `steps` GETs; a PATCH to STOPPED goes STOPPING → STOPPED.
`fail_next_deploy` ends the next start in ERROR; `hold_next_deploy` keeps it PENDING.
Hardware must be one the catalogue lists for the model. Errors are
`{"error": {message, type, param, code}}`.

Chat completions answer for a dedicated endpoint by its `name` (the quickstart: "The
endpoint name is passed to the model parameter"), only while it is STARTED: the answer
echoes the last message (`echo: …`), tokens are words. What Together answers for a
stopped endpoint is not documented; 400 `model_not_available` here, and 404
`model_not_found` for a name no endpoint has.

Test controls: `endpoint`, `endpoints`, `tamper`, `create_by_hand`, `fail_next_deploy`,
`hold_next_deploy`, `creates`, `reply` (the next chat answers' text instead of the echo).
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

#: model → the hardware ids it can run on.
CATALOGUE: dict[str, tuple[str, ...]] = {
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": (
        "2x_nvidia_h100_80gb_sxm",
        "4x_nvidia_h100_80gb_sxm",
        "2x_nvidia_a100_80gb_sxm",
    ),
    "Qwen/Qwen2.5-7B-Instruct-Turbo": (
        "1x_nvidia_a100_80gb_sxm",
        "1x_nvidia_h100_80gb_sxm",
        "1x_nvidia_l40s_48gb_pcie",
    ),
}
CREATE_FIELDS = frozenset(
    {
        "model",
        "hardware",
        "autoscaling",
        "display_name",
        "disable_prompt_cache",
        "disable_speculative_decoding",
        "state",
        "inactive_timeout",
        "availability_zone",
    }
)
UPDATE_FIELDS = frozenset({"display_name", "state", "autoscaling", "inactive_timeout"})


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> Answer:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Answer(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


class FakeTogether(LoopbackServer):
    def __init__(self, token: str = "tg_test", *, steps: int = 2, user: str = "acme") -> None:
        super().__init__()
        self.token = token
        self.steps = steps
        self.user = user
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._progress: dict[str, deque[str]] = {}
        self._failures = 0
        self._holds = 0
        self._ids = itertools.count(1)
        #: POSTs that made an endpoint, by display name.
        self.creates: dict[str, int] = {}
        #: When set, what chat completions answer instead of echoing.
        self.reply: str | None = None

    # --- test controls -------------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._endpoints.get(endpoint_id)
            return None if found is None else copy(found)

    def endpoints(self, display_name: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy(e)
                for e in self._endpoints.values()
                if display_name is None or e.get("display_name") == display_name
            ]

    def tamper(self, endpoint_id: str, field: str, value: Any) -> None:
        with self.lock:
            node = self._endpoints[endpoint_id]
            *parents, last = field.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value

    def create_by_hand(self, body: dict[str, Any]) -> str:
        with self.lock:
            obj = self._make(copy(body))
            obj["state"] = "STARTED"
            self._progress.pop(obj["id"], None)
            return str(obj["id"])

    def fail_next_deploy(self, times: int = 1) -> None:
        """The next `times` starts end in ERROR (the schema has no field saying why)."""
        with self.lock:
            self._failures += times

    def hold_next_deploy(self, times: int = 1) -> None:
        with self.lock:
            self._holds += times

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.authorization != f"Bearer {self.token}":
            return _error(401, "Invalid API key provided", code="invalid_api_key")
        parts = [unquote(p) for p in req.path.split("/") if p]
        if parts == ["v1", "chat", "completions"] and req.method == "POST":
            return self._chat(req.body)
        if parts[:2] != ["v1", "endpoints"]:
            return _error(404, f"no route for {req.path}")
        if len(parts) == 2:
            if req.method == "GET":
                return self._list(req.query)
            if req.method == "POST":
                return self._create(req.body)
            return _error(405, "method not allowed")
        if len(parts) != 3:
            return _error(404, f"no route for {req.path}")
        current = self._endpoints.get(parts[2])
        if current is None:
            return _error(404, f"endpoint {parts[2]} not found", code="not_found")
        if req.method == "GET":
            self._advance(current)
            return Answer(200, copy(current))
        if req.method == "PATCH":
            return self._update(current, req.body)
        if req.method == "DELETE":
            del self._endpoints[parts[2]]
            self._progress.pop(parts[2], None)
            return Answer(204)
        return _error(405, "method not allowed")

    def _list(self, query: dict[str, str]) -> Answer:
        rows = []
        for e in self._endpoints.values():
            if query.get("type") not in (None, "dedicated"):
                continue
            rows.append(
                {
                    k: e[k]
                    for k in ("object", "id", "name", "display_name", "model", "type", "owner")
                }
                | {"state": e["state"], "created_at": e["created_at"]}
            )
        return Answer(200, {"object": "list", "data": rows})

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        if unknown := sorted(set(body) - CREATE_FIELDS):
            return _error(400, f"unknown parameter: {unknown[0]}", param=unknown[0])
        for field in ("model", "hardware", "autoscaling"):
            if field not in body:
                return _error(400, f"{field} is required", param=field)
        if problem := _invalid(body):
            return _error(400, *problem)
        if body.get("state", "STARTED") not in ("STARTED", "STOPPED"):
            return _error(400, "state must be STARTED or STOPPED", param="state")
        obj = self._make(body)
        name = str(body.get("display_name"))
        self.creates[name] = self.creates.get(name, 0) + 1
        return Answer(200, copy(obj))

    def _update(self, current: dict[str, Any], body: Any) -> Answer:
        if not isinstance(body, dict) or not body:
            return _error(400, "nothing to update")
        if unknown := sorted(set(body) - UPDATE_FIELDS):
            return _error(
                400,
                f"{unknown[0]} cannot be updated; create a new endpoint instead",
                param=unknown[0],
            )
        merged = {**current, **body}
        if problem := _invalid(merged):
            return _error(400, *problem)
        state = body.get("state")
        if state is not None and state not in ("STARTED", "STOPPED"):
            return _error(400, "state must be STARTED or STOPPED", param="state")
        for k in ("display_name", "autoscaling", "inactive_timeout"):
            if k in body:
                current[k] = body[k]
        if state == "STOPPED" and current["state"] != "STOPPED":
            current["state"] = "STOPPING"
            self._progress[current["id"]] = deque(["STOPPED"])
        elif state == "STARTED" and current["state"] in ("STOPPED", "STOPPING", "ERROR"):
            self._start(current)
        return Answer(200, copy(current))

    def _chat(self, body: Any) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required", param="messages")
        model = body.get("model")
        found = [e for e in self._endpoints.values() if e["name"] == model]
        if not found:
            return _error(404, f"Unable to access model {model}", code="model_not_found")
        if found[0]["state"] != "STARTED":
            return _error(
                400,
                f"Unable to access model {model}: the endpoint is {found[0]['state']}",
                code="model_not_available",
            )
        messages = body["messages"]
        last = messages[-1].get("content") if messages else ""
        text = self.reply if self.reply is not None else f"echo: {last}"
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        out = len(text.split())
        return Answer(200, {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion",
            "created": 1_800_000_000, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out,
                      "total_tokens": prompt + out},
        })  # fmt: skip

    # --- helpers -----------------------------------------------------------------------

    def _make(self, body: dict[str, Any]) -> dict[str, Any]:
        n = next(self._ids)
        ident = f"endpoint-{n:08d}-0000-4000-8000-{n:012d}"
        obj: dict[str, Any] = {
            "object": "endpoint",
            "id": ident,
            "name": f"{self.user}/{body['model']}-{n:08x}",
            "display_name": body.get("display_name") or f"{body['model']} endpoint",
            "model": body["model"],
            "hardware": body["hardware"],
            "type": "dedicated",
            "owner": self.user,
            "state": "PENDING",
            "autoscaling": dict(body["autoscaling"]),
            "inactive_timeout": body.get("inactive_timeout"),
            "availability_zone": body.get("availability_zone"),
            "disable_speculative_decoding": bool(body.get("disable_speculative_decoding")),
            "created_at": f"2026-01-01T00:00:{n % 60:02d}Z",
        }
        self._endpoints[ident] = obj
        if body.get("state") == "STOPPED":
            obj["state"] = "STOPPED"
        else:
            self._start(obj)
        return obj

    def _start(self, obj: dict[str, Any]) -> None:
        failure = self._failures > 0
        self._failures -= failure
        obj["state"] = "PENDING"
        if self._holds:
            self._holds -= 1
            self._progress[obj["id"]] = deque()
            return
        shown = ["STARTING"] * max(self.steps - 1, 0)
        self._progress[obj["id"]] = deque([*shown, "ERROR" if failure else "STARTED"])

    def _advance(self, obj: dict[str, Any]) -> None:
        queue = self._progress.get(obj["id"])
        if not queue:
            return
        obj["state"] = queue.popleft()


def _invalid(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) for what the API refuses in a create body or a merged update."""
    model, hardware = body.get("model"), body.get("hardware")
    if model not in CATALOGUE:
        return f"model {model!r} is not available for dedicated endpoints", "model"
    if hardware not in CATALOGUE[model]:
        return f"hardware {hardware!r} is not available for {model}", "hardware"
    scale = body.get("autoscaling")
    if not isinstance(scale, dict) or set(scale) != {"min_replicas", "max_replicas"}:
        return "autoscaling needs min_replicas and max_replicas", "autoscaling"
    lo, hi = scale["min_replicas"], scale["max_replicas"]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)):
        return "min_replicas and max_replicas must be integers", "autoscaling"
    if lo < 1 or hi < lo:
        return "autoscaling needs 1 <= min_replicas <= max_replicas", "autoscaling"
    timeout = body.get("inactive_timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 0):
        return "inactive_timeout must be a whole number of minutes", "inactive_timeout"
    return None
