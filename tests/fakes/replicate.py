"""A Replicate deployments stand-in on 127.0.0.1, in the shapes of the Replicate HTTP
API's OpenAPI description (deployments.create/get/update/delete, account.get,
hardware.list) and replicate-python's `deployment.py`:

    GET    /v1/account                       the token's account {type, username, name}
    GET    /v1/hardware                      [{name, sku}]
    POST   /v1/deployments                   all of name, model, version, hardware,
                                             min_instances (0-5), max_instances (0-20)
                                             → 200, the deployment (release 1)
    GET    /v1/deployments/{owner}/{name}    200 | 404
    PATCH  /v1/deployments/{owner}/{name}    any of version, hardware, min_instances,
                                             max_instances (not model) → a new release
    DELETE /v1/deployments/{owner}/{name}    204; refused (409) unless it has been
                                             offline (0 instances) for 15 minutes
    POST   /v1/deployments/{owner}/{name}/predictions
                                             {input, stream?, webhook?,
                                             webhook_events_filter?}; `Prefer: wait=n`
                                             (n 1-60) → 201 with the prediction done,
                                             else 202 (still starting or processing);
                                             without it 201, starting
    GET    /v1/predictions/{id}              the prediction (urls.get)
    POST   /v1/predictions/{id}/cancel       → canceled (urls.cancel)

A prediction: {id, model, version, input, output, logs, error, status (starting,
processing, succeeded, failed, canceled), created_at, started_at, completed_at,
data_removed, metrics: {predict_time, total_time, input_token_count,
output_token_count}, urls: {get, cancel, stream, web}}. It moves one step per GET:
starting → processing (`prediction_steps` GETs) → succeeded, or `failed` with the
error `fail_next_prediction` gives; `hold_next_prediction` keeps one processing.
Models' inputs are checked as their schemas would: `prompt` (text) is required. A
language model's output is a list of text pieces echoing the prompt (`echo:` and its
words; tokens are words); an image model's a list of file URLs. A deployment held at
0 instances takes no prediction (Replicate's docs: disabling one "prevent[s] further
predictions from running"; the status is not documented: 409 here).

Errors are RFC 7807 problem details `{title, detail, status}`; fields a request may
not carry are refused with 422, as is a version of another model or a hardware SKU
not offered. Which status a refused delete gets is not documented; 409 here.

Time is the stand-in's own (`now`, moved by `advance`): a test moves it on as a
provider's injected sleep waits, so "15 minutes offline" takes no wall-clock time.

Test controls: `deployment`, `tamper`, `create_by_hand`, `advance`, `creates`,
`prediction`, `prediction_steps`, `fail_next_prediction`, `hold_next_prediction`,
`reply`.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

#: model → its versions (64 hex characters each).
MODELS: dict[str, tuple[str, ...]] = {
    "stability-ai/sdxl": ("39ed52f2" + "a" * 56, "7762fd07" + "b" * 56),
    "meta/meta-llama-3-8b-instruct": ("5a6809ca" + "c" * 56,),
}
HARDWARE = {
    "cpu": "CPU",
    "gpu-t4": "Nvidia T4 GPU",
    "gpu-l40s": "Nvidia L40S GPU",
    "gpu-a40-small": "Nvidia A40 GPU",
    "gpu-a40-large": "Nvidia A40 (Large) GPU",
    "gpu-a100-large": "Nvidia A100 (80GB) GPU",
}
CREATE_FIELDS = ("name", "model", "version", "hardware", "min_instances", "max_instances")
UPDATE_FIELDS = frozenset({"version", "hardware", "min_instances", "max_instances"})
#: deployments.predictions.create's body (the OpenAPI's prediction_request).
PREDICTION_FIELDS = frozenset({"input", "stream", "webhook", "webhook_events_filter"})
#: The OpenAPI's prefer_header pattern.
PREFER = re.compile(r"wait(=([1-9]|[1-9][0-9]|60))?")
#: Models whose output is text (a list of pieces) and who report token counts.
LANGUAGE_MODELS = frozenset({"meta/meta-llama-3-8b-instruct"})
#: Replicate's documented rule: deletable after this long offline and unused.
OFFLINE_FOR = 15 * 60.0
REFUSED_DELETE = (
    "You can only delete deployments that have been offline and unused for at least 15 minutes."
)


def _problem(status: int, title: str, detail: str) -> Answer:
    return Answer(status, {"title": title, "detail": detail, "status": status})


class FakeReplicate(LoopbackServer):
    def __init__(self, token: str = "r8_test", *, username: str = "acme") -> None:
        super().__init__()
        self.token = token
        self.username = username
        #: The stand-in's clock, in seconds; `advance` moves it.
        self.now = 0.0
        self._deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self._offline_since: dict[tuple[str, str], float | None] = {}
        #: POSTs that made a deployment, by name.
        self.creates: dict[str, int] = {}
        #: GETs a prediction spends processing before it ends.
        self.prediction_steps = 0
        #: When set, what a language model answers instead of echoing.
        self.reply: str | None = None
        self._predictions: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, int] = {}
        self._prediction_failures: list[str] = []
        self._prediction_holds = 0
        self._prediction_ids = itertools.count(1)

    # --- test controls -------------------------------------------------------------

    def deployment(self, owner: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._deployments.get((owner, name))
            return None if found is None else copy(found)

    def tamper(self, owner: str, name: str, field: str, value: Any) -> None:
        """Change the current release's configuration (or version) as the web UI
        would: a new release, made by someone else."""
        with self.lock:
            dep = self._deployments[(owner, name)]
            self._release(dep, {field: value}, by="someone-in-the-ui")

    def create_by_hand(self, owner: str, body: dict[str, Any], *, by: str = "a-colleague") -> None:
        with self.lock:
            self._make(owner, copy(body), by=by)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds

    def prediction(self, ident: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._predictions.get(ident)
            return None if found is None else copy(found)

    def predictions(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy(p) for p in self._predictions.values()]

    def fail_next_prediction(self, error: str) -> None:
        """The next prediction ends `failed` with this error (the model raised it)."""
        with self.lock:
            self._prediction_failures.append(error)

    def hold_next_prediction(self) -> None:
        """The next prediction stays processing until it is cancelled."""
        with self.lock:
            self._prediction_holds += 1

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.authorization != f"Bearer {self.token}":
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        parts = [unquote(p) for p in req.path.split("/") if p]
        if parts[:1] != ["v1"]:
            return _problem(404, "Not found", f"no route for {req.path}")
        parts = parts[1:]
        if parts == ["account"] and req.method == "GET":
            return Answer(200, {"type": "organization", "username": self.username, "name": "Acme"})
        if parts == ["hardware"] and req.method == "GET":
            return Answer(200, [{"name": n, "sku": s} for s, n in HARDWARE.items()])
        if parts[:1] == ["predictions"] and len(parts) in (2, 3):
            return self._prediction_call(req, parts[1:])
        if len(parts) == 4 and parts[0] == "deployments" and parts[3] == "predictions":
            if req.method != "POST":
                return _problem(405, "Method not allowed", f"{req.method} {req.path}")
            found = self._deployments.get((parts[1], parts[2]))
            if found is None:
                return _problem(404, "Not found", "Deployment not found")
            return self._predict(found, req)
        if parts == ["deployments"]:
            if req.method == "POST":
                return self._create(req.body)
            if req.method == "GET":
                items = [copy(d) for d in self._deployments.values()]
                return Answer(200, {"next": None, "previous": None, "results": items})
        if len(parts) != 3 or parts[0] != "deployments":
            return _problem(404, "Not found", f"no route for {req.path}")
        key = (parts[1], parts[2])
        current = self._deployments.get(key)
        if current is None:
            return _problem(404, "Not found", "Deployment not found")
        if req.method == "GET":
            return Answer(200, copy(current))
        if req.method == "PATCH":
            return self._update(key, current, req.body)
        if req.method == "DELETE":
            config = current["current_release"]["configuration"]
            since = self._offline_since.get(key)
            if config["min_instances"] != 0 or since is None or self.now - since < OFFLINE_FOR:
                return _problem(409, "Conflict", REFUSED_DELETE)
            del self._deployments[key]
            self._offline_since.pop(key, None)
            return Answer(204)
        return _problem(405, "Method not allowed", f"{req.method} {req.path}")

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _problem(422, "Invalid input", "the body must be a JSON object")
        if unknown := sorted(set(body) - set(CREATE_FIELDS)):
            return _problem(422, "Invalid input", f"unknown fields: {', '.join(unknown)}")
        if missing := [f for f in CREATE_FIELDS if f not in body]:
            return _problem(422, "Invalid input", f"{', '.join(missing)}: required")
        owner = self.username
        if (owner, body["name"]) in self._deployments:
            return _problem(409, "Conflict", f"A deployment named {body['name']} already exists")
        if problem := _invalid(body):
            return _problem(422, "Invalid input", problem)
        obj = self._make(owner, body, by=self.username)
        self.creates[body["name"]] = self.creates.get(body["name"], 0) + 1
        return Answer(200, copy(obj))

    def _update(self, key: tuple[str, str], current: dict[str, Any], body: Any) -> Answer:
        if not isinstance(body, dict) or not body:
            return _problem(422, "Invalid input", "nothing to update")
        if unknown := sorted(set(body) - UPDATE_FIELDS):
            return _problem(
                422, "Invalid input", f"cannot update {', '.join(unknown)} of a deployment"
            )
        release = current["current_release"]
        merged = {
            "model": release["model"],
            "version": release["version"],
            **release["configuration"],
            **body,
        }
        if problem := _invalid(merged):
            return _problem(422, "Invalid input", problem)
        self._release(current, body, by=self.username)
        self._offline(key, current)
        return Answer(200, copy(current))

    def _predict(self, dep: dict[str, Any], req: Request) -> Answer:
        prefer = req.headers.get("prefer")
        if prefer is not None and not PREFER.fullmatch(prefer):
            return _problem(400, "Invalid header", f"Prefer: {prefer!r} is not wait or wait=1-60")
        body = req.body
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(422, "Invalid input", "input: required")
        if unknown := sorted(set(body) - PREDICTION_FIELDS):
            return _problem(422, "Invalid input", f"unknown fields: {', '.join(unknown)}")
        if not isinstance(body["input"].get("prompt"), str):
            return _problem(422, "Invalid input", "input.prompt: required (a string)")
        release = dep["current_release"]
        if release["configuration"]["max_instances"] == 0:
            return _problem(409, "Conflict", "This deployment is disabled (0 instances)")
        ident = f"pred{next(self._prediction_ids):06d}"
        base = self.url
        pred: dict[str, Any] = {
            "id": ident, "model": release["model"], "version": release["version"],
            "input": copy(body["input"]), "output": None, "logs": "", "error": None,
            "status": "starting", "created_at": f"t+{self.now:g}", "started_at": None,
            "completed_at": None, "data_removed": False, "metrics": {},
            "urls": {"get": f"{base}/v1/predictions/{ident}",
                     "cancel": f"{base}/v1/predictions/{ident}/cancel",
                     "stream": f"{base}/v1/predictions/{ident}/stream",
                     "web": f"https://replicate.com/p/{ident}"},
        }  # fmt: skip
        self._predictions[ident] = pred
        if self._prediction_holds:
            self._prediction_holds -= 1
            self._pending[ident] = -1
        else:
            self._pending[ident] = self.prediction_steps
        if prefer is not None:  # held open: a quick model finishes within it
            self._step(pred)
        done = pred["status"] in ("succeeded", "failed", "canceled")
        return Answer(201 if prefer is None or done else 202, copy(pred))

    def _prediction_call(self, req: Request, rest: list[str]) -> Answer:
        pred = self._predictions.get(rest[0])
        if pred is None:
            return _problem(404, "Not found", "Prediction not found")
        if rest[1:] == [] and req.method == "GET":
            self._step(pred)
            return Answer(200, copy(pred))
        if rest[1:] == ["cancel"] and req.method == "POST":
            if pred["status"] in ("starting", "processing"):
                pred.update(status="canceled", completed_at=f"t+{self.now:g}")
                self._pending.pop(pred["id"], None)
            return Answer(200, copy(pred))
        return _problem(404, "Not found", f"no route for {req.path}")

    def _step(self, pred: dict[str, Any]) -> None:
        """One step of a prediction: processing while steps remain, then its end."""
        left = self._pending.get(pred["id"])
        if left is None:
            return
        pred.update(status="processing", started_at=pred["started_at"] or f"t+{self.now:g}")
        if left != 0:
            self._pending[pred["id"]] = left - 1 if left > 0 else left
            return
        del self._pending[pred["id"]]
        pred["completed_at"] = f"t+{self.now:g}"
        if self._prediction_failures:
            pred.update(status="failed", error=self._prediction_failures.pop(0))
            return
        prompt = str(pred["input"]["prompt"])
        metrics: dict[str, Any] = {"predict_time": 0.01, "total_time": 0.02}
        if pred["model"] in LANGUAGE_MODELS:
            text = self.reply if self.reply is not None else f"echo: {prompt}"
            words = text.split()
            output: Any = [words[0], *[f" {w}" for w in words[1:]]]
            metrics.update(input_token_count=len(prompt.split()), output_token_count=len(words))
        else:
            output = [f"https://replicate.delivery/xezq/{pred['id']}/out-0.webp"]
        pred.update(status="succeeded", output=output, metrics=metrics)

    # --- helpers -----------------------------------------------------------------------

    def _make(self, owner: str, body: dict[str, Any], *, by: str) -> dict[str, Any]:
        obj = {
            "owner": owner,
            "name": body["name"],
            "current_release": {
                "number": 1,
                "model": body["model"],
                "version": body["version"],
                "created_at": f"t+{self.now:g}",
                "created_by": {"type": "organization", "username": by, "name": by},
                "configuration": {
                    "hardware": body["hardware"],
                    "min_instances": body["min_instances"],
                    "max_instances": body["max_instances"],
                },
            },
        }
        key = (owner, body["name"])
        self._deployments[key] = obj
        self._offline_since[key] = None
        self._offline(key, obj)
        return obj

    def _release(self, dep: dict[str, Any], changes: dict[str, Any], *, by: str) -> None:
        release = dep["current_release"]
        config = dict(release["configuration"])
        version = changes.get("version", release["version"])
        config.update({k: v for k, v in changes.items() if k != "version"})
        dep["current_release"] = {
            **release,
            "number": release["number"] + 1,
            "version": version,
            "created_at": f"t+{self.now:g}",
            "created_by": {"type": "organization", "username": by, "name": by},
            "configuration": config,
        }

    def _offline(self, key: tuple[str, str], dep: dict[str, Any]) -> None:
        """Offline from the moment no instance may run; online again otherwise."""
        if dep["current_release"]["configuration"]["min_instances"] == 0:
            if self._offline_since.get(key) is None:
                self._offline_since[key] = self.now
        else:
            self._offline_since[key] = None


def _invalid(body: dict[str, Any]) -> str | None:
    """What the API refuses in a create body (or an update merged onto the release)."""
    for field in ("min_instances", "max_instances"):
        if isinstance(body.get(field), bool) or not isinstance(body.get(field), int):
            return f"{field}: must be an integer"
    if not 0 <= body["min_instances"] <= 5:
        return "min_instances: must be between 0 and 5"
    if not 0 <= body["max_instances"] <= 20:
        return "max_instances: must be between 0 and 20"
    if body["max_instances"] < body["min_instances"]:
        return "max_instances: must be greater than or equal to min_instances"
    if body.get("hardware") not in HARDWARE:
        return f"hardware: {body.get('hardware')!r} is not a valid hardware SKU"
    versions = MODELS.get(str(body.get("model")))
    if versions is None:
        return f"model: {body.get('model')!r} does not exist or you do not have access"
    if body.get("version") not in versions:
        return f"version: {body.get('version')!r} is not a version of {body['model']}"
    return None
