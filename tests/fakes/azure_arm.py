"""An Azure Resource Manager stand-in on 127.0.0.1 for Azure OpenAI deployments, as
Azure/azure-rest-api-specs `cognitiveservices/.../stable/2024-10-01/cognitiveservices.json`
(Deployments_Get/CreateOrUpdate/Delete, its PutDeployment/DeleteDeployment examples)
and ARM's "Track asynchronous Azure operations" describe them:

    GET    .../accounts/{account}/deployments/{name}?api-version=   200 | 404
    PUT    .../deployments/{name}?api-version=   201 created / 200 updated, with
           provisioningState Accepted and an Azure-AsyncOperation header to poll
    DELETE .../deployments/{name}?api-version=   202 with a Location header | 204 absent
    GET    {Azure-AsyncOperation}  200 {status: InProgress|Succeeded|Failed, error?}
    GET    {Location}              202 while running, then 200

Errors are ARM's `{"error": {"code", "message"}}`. A write while another operation runs
in the same account is `409 RequestConflict`; changing a deployment's model or SKU is
refused (`400`); a missing account is `404 ParentResourceNotFound`; every request needs
the pinned api-version and the bearer token. An operation ends after
`operation_polls` polls of its status.

Test controls: `add_account`, `deployment`, `tamper`, `put_by_hand`,
`fail_next_operation`, `conflicts` (409s answered), `peak_busy`, `busy_until` (another
operation, from another CI job or the portal, runs on an account until a time on the
test's clock), `accept` (Entra tokens with their expiry: one past it is 401
ExpiredAuthenticationToken, as ARM answers an hour-old token).
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .loopback import Answer, LoopbackServer, Request, copy

API_VERSION = "2024-10-01"
PROVIDER = "Microsoft.CognitiveServices"
DEPLOYMENT = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.CognitiveServices"
    r"/accounts/([^/]+)/deployments/([^/]+)$",
    re.IGNORECASE,
)
OPERATION = re.compile(
    r"^/subscriptions/([^/]+)/providers/Microsoft\.CognitiveServices/locations/[^/]+"
    r"/(operationStatuses|operationResults)/([^/]+)$",
    re.IGNORECASE,
)
#: What Azure assigns when a PUT leaves the model version out.
DEFAULT_VERSIONS = {"gpt-4o": "2024-08-06", "gpt-4o-mini": "2024-07-18"}


def _error(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}}, dict(headers))


@dataclass
class _Operation:
    account: str
    subscription: str
    name: str
    kind: str  # create | update | delete
    polls_left: int
    failure: str | None = None


class FakeAzure(LoopbackServer):
    def __init__(
        self, token: str = "arm-token", *, operation_polls: int = 2, retry_after: str = "1"
    ) -> None:
        super().__init__()
        self.token = token
        #: The Retry-After (seconds) every running operation answers with.
        self.retry_after = retry_after
        #: Status polls before an operation ends (0: writes end at once, no headers).
        self.operation_polls = operation_polls
        #: account path (lower case) → deployment name → the resource as ARM returns it.
        self._accounts: dict[str, dict[str, dict[str, Any]]] = {}
        self._operations: dict[str, _Operation] = {}
        self._busy: dict[str, str] = {}  # account → operation id
        self._failures: deque[str] = deque()
        self._ids = itertools.count(1)
        #: 409 RequestConflict answers given (a write while the account was busy).
        self.conflicts = 0
        #: The most accounts with an operation running at once.
        self.peak_busy = 0
        #: account path (lower case) → until when (by `clock`) someone else's operation runs.
        self._held: dict[str, float] = {}
        self.clock: Callable[[], float] = time.time
        #: Entra tokens and their expiry (by `clock`); empty: only `token`, for ever.
        self.tokens: dict[str, float] = {}

    # --- test controls -------------------------------------------------------------

    def add_account(self, subscription: str, resource_group: str, account: str) -> str:
        path = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
            f"{PROVIDER}/accounts/{account}"
        )
        with self.lock:
            self._accounts.setdefault(path.lower(), {})
        return path

    def deployment(self, account_path: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self._accounts[account_path.lower()].get(name.lower())
            return None if found is None else copy(found)

    def tamper(self, account_path: str, name: str, path: str, value: Any) -> None:
        """Change a deployment behind the reconciler's back (as the portal would)."""
        with self.lock:
            node = self._accounts[account_path.lower()][name.lower()]
            *parents, last = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value

    def put_by_hand(self, account_path: str, name: str, body: dict[str, Any]) -> None:
        """A deployment someone made in the portal (no reconciler tags unless given)."""
        with self.lock:
            self._store(account_path, name, copy(body), "Succeeded")

    def busy_until(self, account_path: str, until: float, clock: Callable[[], float]) -> None:
        with self.lock:
            self._held[account_path.lower()] = until
            self.clock = clock

    def accept(self, tokens: dict[str, float], clock: Callable[[], float]) -> None:
        with self.lock:
            self.tokens = tokens
            self.clock = clock

    def fail_next_operation(self, message: str) -> None:
        with self.lock:
            self._failures.append(message)

    # --- the API -------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        bearer = (req.authorization or "").removeprefix("Bearer ")
        if self.tokens:
            if bearer not in self.tokens:
                return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
            if self.clock() >= self.tokens[bearer]:
                return _error(
                    401,
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                )
        elif req.authorization != f"Bearer {self.token}":
            return _error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if req.query.get("api-version") != API_VERSION:
            return _error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{req.query.get('api-version')}' is invalid.",
            )
        path = unquote(req.path)
        if m := OPERATION.match(path):
            return self._poll(m.group(2).lower(), m.group(3))
        m = DEPLOYMENT.match(path)
        if m is None:
            return _error(404, "InvalidResourceType", f"no route for {path}")
        sub, rg, account, name = m.groups()
        account_path = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/accounts/{account}"
        )
        deployments = self._accounts.get(account_path.lower())
        if deployments is None:
            return _error(
                404,
                "ParentResourceNotFound",
                f"Can not perform requested operation on nested resource. Parent resource "
                f"'{account}' not found.",
            )
        if req.method == "GET":
            found = deployments.get(name.lower())
            if found is None:
                return _error(404, "DeploymentNotFound", f"The deployment '{name}' was not found.")
            return Answer(200, copy(found))
        held = self._held.get(account_path.lower())
        if held is not None and self.clock() >= held:
            del self._held[account_path.lower()]
            held = None
        if req.method in ("PUT", "DELETE") and (account_path.lower() in self._busy or held):
            self.conflicts += 1
            return _error(
                409,
                "RequestConflict",
                f"Another operation is being performed on the parent resource '{account_path}'. "
                "Please try again later.",
            )
        if req.method == "PUT":
            return self._put(account_path, sub, name, req.body)
        if req.method == "DELETE":
            return self._delete(account_path, sub, name)
        return _error(405, "MethodNotAllowed", "method not allowed")

    def _put(self, account_path: str, sub: str, name: str, body: Any) -> Answer:
        deployments = self._accounts[account_path.lower()]
        if not isinstance(body, dict) or not (body.get("sku") or {}).get("name"):
            return _error(400, "InvalidResourceProperties", "The sku name is required.")
        model = (body.get("properties") or {}).get("model") or {}
        if not model.get("name") or not model.get("format"):
            return _error(
                400, "InvalidResourceProperties", "The model name and format are required."
            )
        current = deployments.get(name.lower())
        if current is not None:
            now = current["properties"]["model"]
            if (now.get("name"), now.get("format")) != (model["name"], model["format"]):
                return _error(
                    400,
                    "InvalidResourceProperties",
                    "The model of an existing deployment cannot be changed, only its version.",
                )
            if current["sku"]["name"] != body["sku"]["name"]:
                return _error(
                    400,
                    "InvalidResourceProperties",
                    "The sku name of an existing deployment cannot be changed.",
                )
        if not model.get("version"):
            model = {**model, "version": DEFAULT_VERSIONS.get(model["name"], "1")}
        stored = {**body, "properties": {**body["properties"], "model": model}}
        status = 200 if current is not None else 201
        if self.operation_polls == 0:
            return Answer(status, self._store(account_path, name, stored, "Succeeded"))
        obj = self._store(account_path, name, stored, "Accepted")
        op = self._start(account_path, sub, name, "update" if current else "create")
        url = self._operation_url(sub, "operationStatuses", op)
        return Answer(status, obj, {"Azure-AsyncOperation": url, "Retry-After": self.retry_after})

    def _delete(self, account_path: str, sub: str, name: str) -> Answer:
        deployments = self._accounts[account_path.lower()]
        if name.lower() not in deployments:
            return Answer(204)
        if self.operation_polls == 0:
            del deployments[name.lower()]
            return Answer(200)
        deployments[name.lower()]["properties"]["provisioningState"] = "Deleting"
        op = self._start(account_path, sub, name, "delete")
        url = self._operation_url(sub, "operationResults", op)
        return Answer(202, None, {"Location": url, "Retry-After": self.retry_after})

    def _poll(self, kind: str, op_id: str) -> Answer:
        op = self._operations.get(op_id)
        if op is None:
            return _error(404, "OperationNotFound", f"operation {op_id} not found")
        if op.polls_left > 0:
            op.polls_left -= 1
            deployment = self._accounts[op.account].get(op.name.lower())
            if deployment is not None and op.kind == "create":
                deployment["properties"]["provisioningState"] = "Creating"
        if op.polls_left > 0:
            if kind == "operationresults":
                return Answer(202, None, {"Retry-After": self.retry_after})
            wait = {"Retry-After": self.retry_after}
            return Answer(200, {"name": op_id, "status": "InProgress"}, wait)
        self._busy.pop(op.account, None)
        deployments = self._accounts[op.account]
        if op.failure is not None:
            if op.name.lower() in deployments:
                deployments[op.name.lower()]["properties"]["provisioningState"] = "Failed"
            error = {"code": "DeploymentFailed", "message": op.failure}
            return Answer(200, {"name": op_id, "status": "Failed", "error": error})
        if op.kind == "delete":
            deployments.pop(op.name.lower(), None)
        elif op.name.lower() in deployments:
            deployments[op.name.lower()]["properties"]["provisioningState"] = "Succeeded"
        if kind == "operationresults":
            return Answer(200)
        return Answer(200, {"name": op_id, "status": "Succeeded"})

    # --- helpers -----------------------------------------------------------------------

    def _store(
        self, account_path: str, name: str, body: dict[str, Any], state: str
    ) -> dict[str, Any]:
        obj = {
            "id": f"{account_path}/deployments/{name}",
            "name": name,
            "type": f"{PROVIDER}/accounts/deployments",
            "sku": body.get("sku"),
            "tags": body.get("tags") or {},
            "etag": f'"{next(self._ids)}"',
            "properties": {
                **body.get("properties", {}),
                "provisioningState": state,
                "rateLimits": [{"key": "request", "renewalPeriod": 10, "count": 10}],
            },
        }
        self._accounts[account_path.lower()][name.lower()] = obj
        return copy(obj)

    def _start(self, account_path: str, sub: str, name: str, kind: str) -> str:
        op_id = f"op-{next(self._ids)}"
        failure = self._failures.popleft() if self._failures and kind != "delete" else None
        self._operations[op_id] = _Operation(
            account_path.lower(), sub, name, kind, self.operation_polls, failure
        )
        self._busy[account_path.lower()] = op_id
        self.peak_busy = max(self.peak_busy, len(self._busy))
        return op_id

    def _operation_url(self, sub: str, kind: str, op_id: str) -> str:
        return (
            f"{self.url}/subscriptions/{sub}/providers/{PROVIDER}/locations/eastus/{kind}/"
            f"{op_id}?api-version={API_VERSION}"
        )
