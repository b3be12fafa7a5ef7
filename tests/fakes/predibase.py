"""A Predibase control-plane stand-in on 127.0.0.1, in the shapes the official SDK
(`predibase` 2025.10.3: `resources/deployments.py`, `resources/deployment.py`,
`config.py`, `_client.py`) sends and reads:

    POST   /v2/deployments          {name, config: DeploymentConfig, description} → {data}
    GET    /v2/deployments          {data: [deployment, ...]}
    GET    /v2/deployments/{name}   {data: deployment} | 404
    PUT    /v2/deployments/{name}   {config?: UpdateDeploymentConfig, description?}: null
                                    fields keep their value (the SDK sends every field)
    DELETE /v2/deployments/{name}   {}

and, as its serving host (docs.predibase.com "Migrate from OpenAI"; the SDK's
`openai_compatible_endpoint`):

    POST   /{tenant}/deployments/v2/llms/{name}/v1/chat/completions
                                    {model: "" (the base model) or an adapter
                                    repo/version, messages, ...} → the OpenAI shape
                                    {choices: [{message: {role, content}}], usage:
                                    {prompt_tokens, completion_tokens, total_tokens}}

A deployment: {name, uuid, description, type, status, model: {name, maxInputLength},
accelerator: {id}, quantization, currentReplicas, config: {baseModel, minReplicas,
maxReplicas, cooldownTime, scaleUpRequestThreshold, ...}, usesGuaranteedCapacity}.
`status` moves one step per GET: pending → initializing → ready over `steps` GETs
(updating → ready after a PUT); `fail_next_deploy` ends the next one in `failed`.

Refused as Predibase documents: a name taken (409), no `baseModel`, a base model or
accelerator not in the catalogue, `cooldownTime` under 600, minReplicas above
maxReplicas or maxReplicas above the tier's limit, an update that changes the
accelerator ("cannot be changed via an update") or the quantization, an unknown
config key, writes to a shared deployment. Errors are `{"error": message}`, which the
SDK reads (`payload.get('error')`).

A chat completion answers only for the fake's `tenant`, a deployment that exists and
is ready or updating (503 otherwise: a replica is not there to answer; the exact
status is not documented), echoing the last message (`echo: …`); tokens are words.

Test controls: `deployment`, `tamper`, `create_by_hand`, `add_shared`,
`fail_next_deploy`, `hold_next_deploy`, `creates`, `tenant`, `reply`.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

#: base model → maxInputLength
MODELS = {
    "qwen3-8b": 32768,
    "llama-3-1-8b-instruct": 8192,
    "mistral-7b-instruct-v0-3": 32768,
}
ACCELERATORS = ("a10_24gb_100", "l40s_48gb_100", "a100_80gb_100", "h100_80gb_100")
DEFAULT_ACCELERATOR = {"qwen3-8b": "a100_80gb_100"}
QUANTIZATIONS = ("none", "fp8", "bitsandbytes-nf4")
#: UpdateDeploymentConfig's fields (camelCase, as the SDK serialises them).
UPDATE_KEYS = frozenset(
    {
        "baseModel",
        "customArgs",
        "cooldownTime",
        "hfToken",
        "minReplicas",
        "maxReplicas",
        "scaleUpRequestThreshold",
        "maxTotalTokens",
        "loraxImageTag",
        "requestLoggingEnabled",
        "directIngress",
        "preloadedAdapters",
        "speculator",
        "prefixCaching",
        "backend",
        "disableAdapters",
        "usesGuaranteedCapacity",
        "chunkedPrefill",
        "speculationDisableByBatchSize",
        "maxNumBatchedTokens",
        "cacheModel",
        "mergeAdapter",
    }
)
#: DeploymentConfig adds these for creation only.
CREATE_KEYS = UPDATE_KEYS | {"computeSpec", "quantization", "accelerator"}
DEFAULTS = {"cooldownTime": 3600, "minReplicas": 0, "maxReplicas": 1, "scaleUpRequestThreshold": 1}
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


class FakePredibase(LoopbackServer):
    def __init__(
        self,
        token: str = "pb_test_token",
        *,
        steps: int = 2,
        max_replicas: int = 6,
        tenant: str = "a1b2c3d4",
    ):
        super().__init__()
        self.token = token
        #: The tenant ID the serving URLs carry.
        self.tenant = tenant
        #: When set, what chat completions answer instead of echoing.
        self.reply: str | None = None
        #: GETs a deployment takes from pending (or updating) to ready.
        self.steps = steps
        #: The tier's most replicas (the docs: 3 on free/dev, 6 on enterprise).
        self.max_replicas = max_replicas
        self._deployments: dict[str, dict[str, Any]] = {}
        self._progress: dict[str, deque[str]] = {}
        self._failures: deque[str] = deque()
        self._holds = 0
        #: POSTs that made a deployment, by name.
        self.creates: dict[str, int] = {}

    # --- test controls -------------------------------------------------------------

    def deployment(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._deployments.get(name)
            return None if found is None else copy(found)

    def tamper(self, name: str, path: str, value: Any) -> None:
        with self.lock:
            node = self._deployments[name]
            *parents, last = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value

    def create_by_hand(self, name: str, config: dict[str, Any], description: str = "") -> None:
        """A deployment made in the UI (ready at once)."""
        with self.lock:
            self._make(name, {**DEFAULTS, **config}, description, "private")
            self._deployments[name]["status"] = "ready"
            self._progress.pop(name, None)

    def add_shared(self, name: str, base_model: str) -> None:
        """One of Predibase's shared deployments, visible to every tenant."""
        with self.lock:
            self._make(name, {**DEFAULTS, "baseModel": base_model}, "", "shared")
            self._deployments[name]["status"] = "ready"
            self._progress.pop(name, None)

    def fail_next_deploy(self) -> None:
        with self.lock:
            self._failures.append("failed")

    def hold_next_deploy(self, times: int = 1) -> None:
        """The next `times` creates or updates never become ready (no GPU capacity)."""
        with self.lock:
            self._holds += times

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.authorization != f"Bearer {self.token}":
            return _error(401, "unauthorized: invalid API token")
        parts = [unquote(p) for p in req.path.split("/") if p]
        if len(parts) == 8 and parts[1:4] == ["deployments", "v2", "llms"]:
            if parts[5:] == ["v1", "chat", "completions"] and req.method == "POST":
                return self._chat(parts[0], parts[4], req.body)
            return _error(404, f"no route for {req.path}")
        if parts[:2] != ["v2", "deployments"] or len(parts) > 3:
            return _error(404, f"no route for {req.path}")
        if len(parts) == 2:
            if req.method == "GET":
                return Answer(200, {"data": [copy(d) for d in self._deployments.values()]})
            if req.method == "POST":
                return self._create(req.body)
            return _error(405, "method not allowed")
        name = parts[2]
        current = self._deployments.get(name)
        if current is None:
            return _error(404, f"deployment {name} not found")
        if req.method == "GET":
            self._advance(name, current)
            return Answer(200, {"data": copy(current)})
        if current["type"] == "shared":
            return _error(403, f"deployment {name} is a shared deployment and cannot be modified")
        if req.method == "PUT":
            return self._update(name, current, req.body)
        if req.method == "DELETE":
            del self._deployments[name]
            self._progress.pop(name, None)
            return Answer(200, {})
        return _error(405, "method not allowed")

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _error(400, "name is required")
        name = body["name"]
        if not NAME.fullmatch(name):
            return _error(400, f"invalid deployment name {name!r}")
        if name in self._deployments:
            return _error(409, f"deployment {name} already exists")
        config = body.get("config")
        if not isinstance(config, dict):
            return _error(400, "config is required")
        config = {k: v for k, v in config.items() if v is not None}
        if unknown := sorted(set(config) - CREATE_KEYS):
            return _error(400, f"unknown config field(s): {', '.join(unknown)}")
        merged = {**DEFAULTS, **config}
        if problem := _invalid(merged, self.max_replicas):
            return _error(400, problem)
        obj = self._make(name, merged, str(body.get("description") or ""), "private")
        self.creates[name] = self.creates.get(name, 0) + 1
        return Answer(200, {"data": copy(obj)})

    def _update(self, name: str, current: dict[str, Any], body: Any) -> Answer:
        if not isinstance(body, dict) or not set(body) <= {"config", "description"}:
            return _error(400, "an update takes config and description")
        if "config" in body:
            config = body["config"]
            if not isinstance(config, dict):
                return _error(400, "config must be an object")
            if "accelerator" in config or "quantization" in config:
                return _error(400, "accelerator and quantization cannot be changed via an update")
            config = {k: v for k, v in config.items() if v is not None}
            if unknown := sorted(set(config) - UPDATE_KEYS):
                return _error(400, f"unknown config field(s): {', '.join(unknown)}")
            if not config.get("baseModel"):
                return _error(400, "config.baseModel is required")
            merged = {**current["config"], **config}
            if problem := _invalid(
                {**merged, "accelerator": current["accelerator"]["id"]}, self.max_replicas
            ):
                return _error(400, problem)
            current["config"] = merged
            current["model"] = {
                "name": merged["baseModel"],
                "maxInputLength": MODELS[merged["baseModel"]],
            }
        if "description" in body:
            current["description"] = str(body["description"] or "")
        self._deploy(name, current, "updating")
        return Answer(200, {"data": copy(current)})

    def _chat(self, tenant: str, name: str, body: Any) -> Answer:
        if tenant != self.tenant:
            return _error(404, f"tenant {tenant} not found")
        dep = self._deployments.get(name)
        if dep is None:
            return _error(404, f"deployment {name} not found")
        if dep["status"] not in ("ready", "updating"):
            return _error(503, f"deployment {name} is {dep['status']}")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "messages is required")
        model = body.get("model")
        if not isinstance(model, str) or (model and "/" not in model):
            return _error(400, "model must be empty (the base model) or an adapter repo/version")
        messages = body["messages"]
        last = messages[-1].get("content") if messages else ""
        text = self.reply if self.reply is not None else f"echo: {last}"
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        out = len(text.split())
        return Answer(200, {
            "id": "cmpl-1", "object": "chat.completion", "created": 1_800_000_000,
            "model": model or dep["config"]["baseModel"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out,
                      "total_tokens": prompt + out},
        })  # fmt: skip

    # --- helpers -----------------------------------------------------------------------

    def _make(
        self, name: str, config: dict[str, Any], description: str, kind: str
    ) -> dict[str, Any]:
        accelerator = config.pop("accelerator", None) or DEFAULT_ACCELERATOR.get(
            config["baseModel"], "a10_24gb_100"
        )
        quantization = config.pop("quantization", None)
        obj = {
            "name": name,
            "uuid": str(uuid.uuid4()),
            "description": description,
            "type": kind,
            "status": "pending",
            "model": {"name": config["baseModel"], "maxInputLength": MODELS[config["baseModel"]]},
            "accelerator": {"id": accelerator},
            "quantization": quantization,
            "currentReplicas": 0,
            "config": config,
            "usesGuaranteedCapacity": bool(config.get("usesGuaranteedCapacity")),
        }
        self._deployments[name] = obj
        self._deploy(name, obj, "pending")
        return obj

    def _deploy(self, name: str, obj: dict[str, Any], start: str) -> None:
        failure = self._failures.popleft() if self._failures else None
        obj["status"] = start
        if self._holds:
            self._holds -= 1
            self._progress[name] = deque()
            return
        middle = "initializing" if start == "pending" else start
        shown = [middle] * max(0, self.steps - 1)
        self._progress[name] = deque([*shown, failure or "ready"])

    def _advance(self, name: str, obj: dict[str, Any]) -> None:
        queue = self._progress.get(name)
        if not queue:
            return
        obj["status"] = queue.popleft()
        if obj["status"] == "ready":
            obj["currentReplicas"] = max(1, obj["config"]["minReplicas"])


def _invalid(config: dict[str, Any], limit: int) -> str | None:
    """What Predibase would refuse in a deployment's (merged) config."""
    base = config.get("baseModel")
    if not base:
        return "config.baseModel is required"
    if base not in MODELS:
        return f"base model {base!r} is not supported; see the list of available models"
    accelerator = config.get("accelerator")
    if accelerator is not None and accelerator not in ACCELERATORS:
        return f"accelerator {accelerator!r} is not available"
    quantization = config.get("quantization")
    if quantization is not None and quantization not in QUANTIZATIONS:
        return f"quantization must be one of {', '.join(QUANTIZATIONS)}"
    lo, hi = config.get("minReplicas"), config.get("maxReplicas")
    if not isinstance(lo, int) or not isinstance(hi, int) or lo < 0 or lo > hi:
        return "minReplicas must be between 0 and maxReplicas"
    if hi > limit:
        return f"maxReplicas {hi} exceeds your tier's limit of {limit}"
    cooldown = config.get("cooldownTime")
    if not isinstance(cooldown, int) or cooldown < 600:
        return "cooldownTime must be at least 600 seconds (10 minutes)"
    threshold = config.get("scaleUpRequestThreshold")
    if not isinstance(threshold, int) or threshold < 1:
        return "scaleUpRequestThreshold must be at least 1"
    adapters = config.get("preloadedAdapters")
    if adapters is not None and (
        not isinstance(adapters, list) or not all(isinstance(a, str) and "/" in a for a in adapters)
    ):
        return "preloadedAdapters must be adapter ids (repo/version)"
    return None
