"""A managed-identity token endpoint on 127.0.0.1, as Azure App Service (and Functions,
Container Apps) serve one to their apps: learn.microsoft.com "How to use managed
identities for App Service and Azure Functions", REST protocol 2019-08-01, which
azure-identity's ManagedIdentityCredential speaks when IDENTITY_ENDPOINT and
IDENTITY_HEADER are set:

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://management.azure.com
        X-IDENTITY-HEADER: {IDENTITY_HEADER}
    200 {"access_token", "expires_on" (epoch seconds, as text), "resource", "token_type"}

A wrong header is 401; each answer is a new token (`mi-token-N`), `lifetime` seconds
long by `clock` (the real one by default: azure-identity decides on it when to ask
again). `issued` lists them, with their expiry, for the ARM stand-in to accept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .loopback import Answer, LoopbackServer, Request

PATH = "/msi/token"


class FakeManagedIdentity(LoopbackServer):
    def __init__(
        self,
        header: str = "identity-header-SECRET",
        *,
        lifetime: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.header = header
        self.lifetime = lifetime
        self.clock = clock
        #: token → expiry (epoch seconds), in the order given out.
        self.issued: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        return f"{self.url}{PATH}"

    def route(self, req: Request) -> Answer:
        if req.path != PATH or req.method != "GET":
            return Answer(404, {"error": "not_found"})
        if req.headers.get("x-identity-header") != self.header:
            return Answer(401, {"error": "invalid_request", "error_description": "bad header"})
        if req.query.get("api-version") != "2019-08-01" or not req.query.get("resource"):
            return Answer(400, {"error": "invalid_request", "error_description": "bad query"})
        token = f"mi-token-{len(self.issued) + 1}"
        expires = self.clock() + self.lifetime
        self.issued[token] = expires
        return Answer(
            200,
            {
                "access_token": token,
                "expires_on": str(int(expires)),
                "resource": req.query["resource"],
                "token_type": "Bearer",
            },
        )
