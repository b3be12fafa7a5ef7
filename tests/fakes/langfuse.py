"""A Langfuse stand-in on 127.0.0.1: the prompt-management part of the public API, as
langfuse/langfuse's Fern definitions (`fern/apis/server/definition/prompts.yml`,
`prompt-version.yml`) and its server (`web/src/features/prompts/server`) define it.

    GET    /api/public/v2/prompts/{name}?label=L|version=N   (neither: label production)
    GET    /api/public/v2/prompts?name=&label=&page=&limit=  {data: [PromptMeta], meta}
    POST   /api/public/v2/prompts                            201, a new version every time
    PATCH  /api/public/v2/prompts/{name}/versions/{version}  {newLabels}, additive
    DELETE /api/public/v2/prompts/{name}?version=|label=     204

Labels are unique per prompt (assigning one moves it), `latest` is Langfuse's own,
a prompt keeps its type, names and labels are checked as Langfuse checks them, and
errors are `{message, error}`. HTTP Basic auth with a public and a secret key.

Test controls: `move_label` (what a person does in the UI), `edit` (a version's
content changed behind the reconciler's back), `prompt`, `versions`, `posts`, and
`limit_per_minute`: Langfuse Cloud's rate limit on every API but the prompt GETs
(langfuse.com/faq/all/api-limits: "All other APIs", 30 requests a minute on Hobby;
answered with 429 and `Retry-After`, the seconds to wait), on a clock the test moves.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

PREFIX = "/api/public/v2/prompts"
LABEL = re.compile(r"[a-z0-9_.-]{1,36}")
LATEST = "latest"


def _error(status: int, message: str, name: str) -> Answer:
    return Answer(status, {"message": message, "error": name})


class FakeLangfuse(LoopbackServer):
    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test") -> None:
        super().__init__()
        self._auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        #: name → versions (dicts as the API returns them), oldest first.
        self._prompts: dict[str, list[dict[str, Any]]] = {}
        #: How many versions POST made, per prompt name.
        self.posts: dict[str, int] = {}
        self._limit: int | None = None
        self._clock: Callable[[], float] = lambda: 0.0
        self._window: tuple[float, int] = (0.0, 0)  # (start, requests counted in it)
        #: Requests refused by the rate limit.
        self.throttled = 0

    # --- test controls -------------------------------------------------------------

    def prompt(self, name: str, *, label: str | None = None, version: int | None = None) -> Any:
        with self.lock:
            found = self._find(name, label=label, version=version)
            return None if found is None else copy(found)

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return copy(self._prompts.get(name, []))

    def move_label(self, name: str, label: str, version: int) -> None:
        with self.lock:
            self._set_labels(name, self._find(name, version=version), [label])

    def edit(self, name: str, version: int, **fields: Any) -> None:
        with self.lock:
            found = self._find(name, version=version)
            assert found is not None
            found.update(copy(fields))

    def limit_per_minute(self, requests: int, clock: Callable[[], float]) -> None:
        """Allow `requests` non-GET requests per minute (a fixed window from the first
        one, by `clock`); more get 429 with the seconds left in the window."""
        with self.lock:
            self._limit, self._clock, self._window = requests, clock, (clock(), 0)

    def _throttled(self, req: Request) -> Answer | None:
        if self._limit is None or req.method == "GET":
            return None
        now = self._clock()
        start, used = self._window
        if now - start >= 60.0:
            start, used = now, 0
        if used >= self._limit:
            self.throttled += 1
            wait = max(1, int(start + 60.0 - now + 0.999))
            return Answer(
                429,
                {"message": "Rate limit exceeded", "error": "TooManyRequests"},
                {"Retry-After": str(wait)},
            )
        self._window = (start, used + 1)
        return None

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.authorization != self._auth:
            return _error(401, "Invalid credentials", "UnauthorizedError")
        if (limited := self._throttled(req)) is not None:
            return limited
        if not req.path.startswith(PREFIX):
            return _error(404, f"no route for {req.path}", "NotFoundError")
        parts = [unquote(p) for p in req.path[len(PREFIX) :].split("/") if p]
        if not parts:
            if req.method == "GET":
                return self._list(req.query)
            if req.method == "POST":
                return self._create(req.body)
        elif len(parts) == 1:
            if req.method == "GET":
                return self._get(parts[0], req.query)
            if req.method == "DELETE":
                return self._delete(parts[0], req.query)
        elif len(parts) == 3 and parts[1] == "versions" and req.method == "PATCH":
            return self._patch(parts[0], parts[2], req.body)
        return _error(405, "Method not allowed", "MethodNotAllowedError")

    def _find(
        self, name: str, *, label: str | None = None, version: int | None = None
    ) -> dict[str, Any] | None:
        for v in self._prompts.get(name, []):
            if (version is not None and v["version"] == version) or (
                version is None and (label or "production") in v["labels"]
            ):
                return v
        return None

    def _get(self, name: str, query: dict[str, str]) -> Answer:
        version = int(query["version"]) if "version" in query else None
        found = self._find(name, label=query.get("label"), version=version)
        if found is None:
            which = (
                f"version {version}" if version else f"label '{query.get('label', 'production')}'"
            )
            return _error(404, f"Prompt not found: '{name}' with {which}", "LangfuseNotFoundError")
        return Answer(200, {**copy(found), "isActive": "production" in found["labels"]})

    def _list(self, query: dict[str, str]) -> Answer:
        page, limit = int(query.get("page", 1)), int(query.get("limit", 50))
        metas = []
        for name, versions in sorted(self._prompts.items()):
            if "name" in query and query["name"] != name:
                continue
            if "label" in query and not any(query["label"] in v["labels"] for v in versions):
                continue
            metas.append(
                {
                    "name": name,
                    "type": versions[-1]["type"],
                    "versions": [v["version"] for v in versions],
                    "labels": sorted({lb for v in versions for lb in v["labels"]}),
                    "tags": versions[-1]["tags"],
                    "lastUpdatedAt": versions[-1]["updatedAt"],
                    "lastConfig": versions[-1]["config"],
                }
            )
        total = len(metas)
        pages = max(1, -(-total // limit))
        data = metas[(page - 1) * limit : page * limit]
        meta = {"page": page, "limit": limit, "totalItems": total, "totalPages": pages}
        return Answer(200, {"data": data, "meta": meta})

    def _create(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return Answer(400, {"message": "Invalid request data", "error": []})
        name, kind = body.get("name"), body.get("type", "text")
        labels = body.get("labels") or []
        problem = _name_problem(name) or _labels_problem(labels)
        if kind == "text" and not isinstance(body.get("prompt"), str):
            problem = problem or "a text prompt is a string"
        if kind == "chat" and not isinstance(body.get("prompt"), list):
            problem = problem or "a chat prompt is a list of messages"
        if problem:
            return Answer(400, {"message": "Invalid request data", "error": [{"message": problem}]})
        assert isinstance(name, str)
        versions = self._prompts.setdefault(name, [])
        if versions and versions[-1]["type"] != kind:
            return _error(
                400,
                "Previous versions have different prompt type. Create a new prompt with a "
                "different name.",
                "InvalidRequestError",
            )
        now = datetime.now(UTC).isoformat()
        new = {
            "id": f"p-{name}-{len(versions) + 1}",
            "name": name,
            "version": (versions[-1]["version"] + 1) if versions else 1,
            "type": kind,
            "prompt": body["prompt"],
            "config": body.get("config") if body.get("config") is not None else {},
            "labels": [],
            "tags": body.get("tags") or (versions[-1]["tags"] if versions else []),
            "commitMessage": body.get("commitMessage"),
            "createdAt": now,
            "updatedAt": now,
        }
        versions.append(new)
        self._set_labels(name, new, [*labels, LATEST])
        self.posts[name] = self.posts.get(name, 0) + 1
        return Answer(201, copy(new))

    def _patch(self, name: str, version: str, body: Any) -> Answer:
        labels = body.get("newLabels") if isinstance(body, dict) else None
        if not isinstance(labels, list) or LATEST in labels:
            return _error(
                400, "Label 'latest' is always assigned to the latest prompt version", "ZodError"
            )
        if problem := _labels_problem(labels):
            return _error(400, problem, "ZodError")
        found = self._find(name, version=int(version))
        if found is None:
            return _error(404, f"Prompt not found: {name}", "LangfuseNotFoundError")
        self._set_labels(name, found, labels)
        return Answer(200, copy(found))

    def _delete(self, name: str, query: dict[str, str]) -> Answer:
        versions = self._prompts.get(name, [])
        gone = [
            v
            for v in versions
            if ("version" not in query or v["version"] == int(query["version"]))
            and ("label" not in query or query["label"] in v["labels"])
        ]
        if not gone:
            return _error(404, f"Prompt not found: '{name}'", "LangfuseNotFoundError")
        keep = [v for v in versions if v not in gone]
        if keep and LATEST not in {lb for v in keep for lb in v["labels"]}:
            keep[-1]["labels"].append(LATEST)
        self._prompts[name] = keep
        if not keep:
            del self._prompts[name]
        return Answer(204)

    def _set_labels(self, name: str, target: dict[str, Any] | None, labels: list[str]) -> None:
        """Additive on `target`, taken off every other version (labels are unique)."""
        assert target is not None
        for v in self._prompts[name]:
            if v is not target:
                v["labels"] = [lb for lb in v["labels"] if lb not in labels]
        target["labels"] = sorted({*target["labels"], *labels})
        target["updatedAt"] = datetime.now(UTC).isoformat()


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        return "Name cannot be empty"
    if "|" in name:
        return "Prompt name cannot contain '|' character"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "Name cannot start or end with a slash or contain consecutive slashes"
    if name in ("new", "metrics", "prompt-detail"):
        return f"Prompt name cannot be '{name}'"
    return None


def _labels_problem(labels: Any) -> str | None:
    if not isinstance(labels, list):
        return "labels must be a list"
    for label in labels:
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            return (
                "Label must be lowercase alphanumeric with optional underscores, hyphens, "
                "or periods"
            )
    return None
