"""A Hugging Face Inference Endpoints stand-in on 127.0.0.1, in the shapes
huggingface/huggingface_hub sends and reads (`hf_api.py`, `_inference_endpoints.py`,
its `tests/test_inference_endpoints.py` answers):

    POST   /v2/endpoint/{namespace}                 the create payload → the endpoint, pending
    GET    /v2/endpoint/{namespace}/{name}          200 | 404
    PUT    /v2/endpoint/{namespace}/{name}          a partial body (compute, model, tags) →
                                                    the endpoint, updating
    DELETE /v2/endpoint/{namespace}/{name}          200
    POST   /v2/endpoint/{namespace}/{name}/pause    → paused
    POST   /v2/endpoint/{namespace}/{name}/resume   → pending (400 "already running")
    GET    /v2/provider/{namespace}                 the hardware catalogue

`status.state` moves one step per GET: pending → initializing → running (with a URL)
over `steps` GETs, or updating → running after a PUT; `fail_next_deploy` ends the next
one in `failed` (or `updateFailed`). Compute must be a combination the catalogue lists.
Errors are `{"error": message}` with the message in `X-Error-Message` too.

Test controls: `endpoint`, `tamper`, `create_by_hand`, `fail_next_deploy`,
`hold_next_deploy`, `creates`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

#: vendor → region → [(accelerator, instanceType, sizes)]
CATALOGUE: dict[str, dict[str, list[tuple[str, str, tuple[str, ...]]]]] = {
    "aws": {
        "us-east-1": [
            ("cpu", "intel-icl", ("x1", "x2", "x4", "x8")),
            ("cpu", "intel-spr", ("x1", "x2", "x4", "x8", "x16")),
            ("gpu", "nvidia-t4", ("x1", "x4")),
            ("gpu", "nvidia-l4", ("x1", "x4")),
            ("gpu", "nvidia-a10g", ("x1", "x4")),
            ("gpu", "nvidia-a100", ("x1", "x2", "x4", "x8")),
            ("neuron", "inf2", ("x1", "x12")),
        ],
    },
    "gcp": {"us-east4": [("gpu", "nvidia-l4", ("x1", "x4"))]},
}
TYPES = ("public", "protected", "authenticated", "private")
UPDATABLE = frozenset({"compute", "model", "route", "tags", "cacheHttpResponses"})
#: Fields of the endpoint that a PUT replaces whole rather than merges (an image and
#: an autoscaling measure are unions: one engine, one metric).
WHOLE = ("env", "secrets", "tags", "image", "measure")
#: The `model.image` union's engines, and the autoscaling metrics.
ENGINES = frozenset({"huggingface", "custom", "tgi", "tei", "vllm", "sglang", "llamacpp"})
MEASURES = frozenset({"pendingRequests", "hardwareUsage"})


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message}, {"X-Error-Message": message})


class FakeHuggingFace(LoopbackServer):
    def __init__(
        self,
        token: str = "hf_test_token",
        *,
        steps: int = 2,
        steps_for: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        #: GETs an endpoint takes from pending (or updating) to running...
        self.steps = steps
        #: ...or, per endpoint name, what this says (benchmarks vary it).
        self.steps_for = steps_for
        self._endpoints: dict[tuple[str, str], dict[str, Any]] = {}
        self._progress: dict[tuple[str, str], deque[str]] = {}
        self._failures: deque[str] = deque()
        #: Creates or updates still to be held in their first state for good.
        self._holds = 0
        #: POSTs that made an endpoint, by name.
        self.creates: dict[str, int] = {}
        #: When set, a running endpoint's `status.url` is this server's
        #: `/inference/{name}`, which answers as Text Generation Inference does.
        self.serve_inference = False

    # --- test controls -------------------------------------------------------------

    def endpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._endpoints.get((namespace, name))
            return None if found is None else copy(found)

    def tamper(self, namespace: str, name: str, path: str, value: Any) -> None:
        with self.lock:
            node = self._endpoints[(namespace, name)]
            *parents, last = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value

    def create_by_hand(self, namespace: str, body: dict[str, Any]) -> None:
        with self.lock:
            self._make(namespace, copy(body), state="running")

    def fail_next_deploy(self, message: str = "Endpoint failed to deploy") -> None:
        """The next create or update ends in failed (or updateFailed)."""
        with self.lock:
            self._failures.append(message)

    def hold_next_deploy(self, times: int = 1) -> None:
        """The next `times` creates or updates stay pending (or updating) for good: an
        endpoint that never becomes ready (no GPU capacity in the region, say)."""
        with self.lock:
            self._holds += times

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.authorization != f"Bearer {self.token}":
            return _error(401, "Invalid credentials in Authorization header")
        parts = [unquote(p) for p in req.path.split("/") if p]
        if parts[:1] == ["inference"] and len(parts) >= 2 and req.method == "POST":
            return self._infer(parts[1], parts[2:], req.body)
        if parts[:2] == ["v2", "provider"] and len(parts) == 3 and req.method == "GET":
            return Answer(200, _catalogue())
        if parts[:2] != ["v2", "endpoint"] or len(parts) < 3:
            return _error(404, f"no route for {req.path}")
        namespace = parts[2]
        if len(parts) == 3:
            if req.method == "GET":
                items = [copy(e) for (ns, _), e in self._endpoints.items() if ns == namespace]
                return Answer(200, {"items": items})
            if req.method == "POST":
                return self._create(namespace, req.body)
            return _error(405, "method not allowed")
        key = (namespace, parts[3])
        current = self._endpoints.get(key)
        if current is None:
            return _error(404, f"Endpoint {parts[3]} not found")
        if len(parts) == 5 and req.method == "POST":
            return self._power(key, current, parts[4])
        if len(parts) != 4:
            return _error(404, f"no route for {req.path}")
        if req.method == "GET":
            self._advance(key, current)
            return Answer(200, copy(current))
        if req.method == "PUT":
            return self._update(key, current, req.body)
        if req.method == "DELETE":
            del self._endpoints[key]
            self._progress.pop(key, None)
            return Answer(200, {})
        return _error(405, "method not allowed")

    def _create(self, namespace: str, body: Any) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _error(400, "name is required")
        if (namespace, body["name"]) in self._endpoints:
            return _error(409, f"Endpoint {body['name']} already exists")
        if problem := _invalid(body):
            return _error(400, problem)
        obj = self._make(namespace, body, state="pending")
        self.creates[body["name"]] = self.creates.get(body["name"], 0) + 1
        return Answer(200, copy(obj))

    def _update(self, key: tuple[str, str], current: dict[str, Any], body: Any) -> Answer:
        if not isinstance(body, dict) or not set(body) <= UPDATABLE:
            return _error(400, "only compute, model, route, tags and cacheHttpResponses update")
        merged = _merge(current, body)
        if problem := _invalid(merged):
            return _error(400, problem)
        current.clear()
        current.update(merged)
        paused = current["status"]["state"] == "paused"
        if not paused:
            self._deploy(key, current, "updating", "updateFailed")
        return Answer(200, copy(current))

    def _power(self, key: tuple[str, str], current: dict[str, Any], action: str) -> Answer:
        status = current["status"]
        if action == "pause":
            status.update(state="paused", message="Endpoint is paused", readyReplica=0)
            status.pop("url", None)
            self._progress.pop(key, None)
        elif action == "resume":
            if status["state"] == "running":
                return _error(400, "Endpoint is already running")
            self._deploy(key, current, "pending", "failed")
        elif action == "scale-to-zero":
            status.update(state="scaledToZero", message="Endpoint is scaled to zero")
        else:
            return _error(404, f"no route for {action}")
        return Answer(200, copy(current))

    # --- helpers -----------------------------------------------------------------------

    def _make(self, namespace: str, body: dict[str, Any], *, state: str) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        obj = {
            **body,
            "accountId": body.get("accountId"),
            "healthRoute": "/health",
            "status": {
                "createdAt": now,
                "updatedAt": now,
                "createdBy": {"id": "u1", "name": "reconciler"},
                "private": None,
                "state": state,
                "message": "Endpoint waiting to be scheduled",
                "readyReplica": 0,
                "targetReplica": body["compute"]["scaling"]["minReplica"],
            },
        }
        key = (namespace, body["name"])
        self._endpoints[key] = obj
        if state == "running":
            self._running(obj)
        else:
            self._deploy(key, obj, state, "failed")
        return obj

    def _deploy(self, key: tuple[str, str], obj: dict[str, Any], start: str, bad: str) -> None:
        """The states the next GETs show: `start` → … → running (or `bad`)."""
        failure = self._failures.popleft() if self._failures else None
        if self._holds:
            self._holds -= 1
            obj["status"].update(state=start, message=f"Endpoint is {start}")
            obj["status"].pop("url", None)
            self._progress[key] = deque()
            return
        steps = self.steps if self.steps_for is None else self.steps_for(key[1])
        if start == "pending":
            shown = ["pending", *["initializing"] * (steps - 1)] if steps else []
        else:
            shown = [start] * steps
        obj["status"].update(state=start, message=f"Endpoint is {start}")
        obj["status"].pop("url", None)
        self._progress[key] = deque([*shown, f"{bad}:{failure}" if failure else "running"])

    def _advance(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        queue = self._progress.get(key)
        if not queue:
            return
        state = queue.popleft()
        if state == "running":
            self._running(obj)
        elif ":" in state:
            bad, message = state.split(":", 1)
            obj["status"].update(state=bad, message=message)
        else:
            obj["status"].update(state=state, message=f"Endpoint is {state}")

    def _running(self, obj: dict[str, Any]) -> None:
        vendor, region = obj["provider"]["vendor"], obj["provider"]["region"]
        url = f"https://{obj['name']}.{region}.{vendor}.endpoints.huggingface.cloud"
        if self.serve_inference:
            url = f"{self.url}/inference/{obj['name']}"
        obj["status"].update(
            state="running",
            message="Endpoint is ready",
            url=url,
            readyReplica=obj["compute"]["scaling"]["minReplica"] or 1,
        )

    def _infer(self, name: str, rest: list[str], body: Any) -> Answer:
        """Text Generation Inference on a running endpoint: `POST /` with `{"inputs",
        "parameters"}` → `[{"generated_text", "details": {"generated_tokens"}}]`;
        `POST /v1/chat/completions` (its OpenAI-compatible Messages API). The answer
        echoes the prompt; tokens are words."""
        running = [e for e in self._endpoints.values() if e["name"] == name]
        if not running or running[0]["status"].get("state") != "running":
            return _error(503, "Service Unavailable")
        if not isinstance(body, dict):
            return _error(422, "the body must be a JSON object")
        if rest == ["v1", "chat", "completions"]:
            messages = body.get("messages") or []
            text = f"echo: {messages[-1].get('content') if messages else ''}"
            prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
            return Answer(200, {
                "object": "chat.completion", "model": "tgi",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                          "total_tokens": prompt + len(text.split())},
            })  # fmt: skip
        if rest:
            return _error(404, "Not Found")
        if not isinstance(body.get("inputs"), str):
            return _error(422, "Input validation error: `inputs` must be a string")
        text = f"echo: {body['inputs']}"
        details = {"finish_reason": "eos_token", "generated_tokens": len(text.split())}
        return Answer(200, [{"generated_text": text, "details": details}])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A partial PUT: nested objects merged, but the WHOLE fields replaced as sent."""
    out = dict(base)
    for k, v in over.items():
        cur = out.get(k)
        if k not in WHOLE and isinstance(v, dict) and isinstance(cur, dict):
            out[k] = _merge(cur, v)
        else:
            out[k] = copy(v)
    return out


def _invalid(body: dict[str, Any]) -> str | None:
    """What the service would refuse in a create payload (or a merged update)."""
    if body.get("type") not in TYPES:
        return f"type must be one of {', '.join(TYPES)}"
    provider = body.get("provider") or {}
    compute = body.get("compute") or {}
    model = body.get("model") or {}
    regions = CATALOGUE.get(provider.get("vendor", ""), {})
    computes = regions.get(provider.get("region", ""))
    if computes is None:
        return f"unknown vendor/region {provider.get('vendor')}/{provider.get('region')}"
    combo = (compute.get("accelerator"), compute.get("instanceType"))
    sizes = next((s for a, t, s in computes if (a, t) == combo), None)
    if sizes is None or compute.get("instanceSize") not in sizes:
        return (
            f"compute {combo[0]}/{combo[1]}/{compute.get('instanceSize')} is not offered in "
            f"{provider.get('vendor')}/{provider.get('region')}"
        )
    scaling = compute.get("scaling") or {}
    lo, hi = scaling.get("minReplica"), scaling.get("maxReplica")
    if not isinstance(lo, int) or not isinstance(hi, int) or lo > hi or hi < 1:
        return "scaling needs 0 <= minReplica <= maxReplica, maxReplica >= 1"
    if scaling.get("scaleToZeroTimeout") is not None and lo != 0:
        return "scaleToZeroTimeout needs minReplica 0"
    if not model.get("repository") or not model.get("framework") or "image" not in model:
        return "model needs repository, framework and image"
    image = model["image"]
    if not isinstance(image, dict) or len(image) != 1 or not set(image) <= ENGINES:
        return f"model.image must be one of {', '.join(sorted(ENGINES))}"
    if "custom" in image and not (image["custom"] or {}).get("url"):
        return "a custom image needs a url"
    measure = scaling.get("measure")
    if measure is not None and (
        not isinstance(measure, dict) or len(measure) != 1 or not set(measure) <= MEASURES
    ):
        return "scaling.measure is one of pendingRequests, hardwareUsage"
    if "task" in model and model["task"] is None:
        return "model.task cannot be null"
    return None


def _catalogue() -> dict[str, Any]:
    return {
        "vendors": [
            {
                "name": vendor,
                "status": "available",
                "regions": [
                    {
                        "name": region,
                        "status": "available",
                        "computes": [
                            {
                                "id": f"{vendor}-{region}-{itype}-{size}",
                                "accelerator": acc,
                                "instanceType": itype,
                                "instanceSize": size,
                                "status": "available",
                            }
                            for acc, itype, sizes in computes
                            for size in sizes
                        ],
                    }
                    for region, computes in regions.items()
                ],
            }
            for vendor, regions in CATALOGUE.items()
        ]
    }
