"""The Azure OpenAI data plane on 127.0.0.1, for runs: chat completions of a deployment
of an account the ARM stand-in (`fakes.azure_arm.FakeAzure`) holds, as the Azure OpenAI
"REST API reference" (inference, api-version 2024-10-21) describes them:

    POST /openai/deployments/{deployment-id}/chat/completions?api-version=2024-10-21
         api-key: KEY
         {"messages": [{"role", "content"}], "temperature"?, "max_tokens"?, ...}
    200  {"id", "object": "chat.completion", "created", "model",
          "choices": [{"index": 0, "message": {"role": "assistant", "content"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

Errors are `{"error": {"code", "message"}}`: 401 without the key, 404
`DeploymentNotFound` for a deployment the account does not have (or not yet
Succeeded), 400 for a body without messages. The answer is "echo: " and the last
message's content (or `reply`, when a test sets it); tokens are words.
"""

from __future__ import annotations

import itertools
import re
from typing import Any
from urllib.parse import unquote

from .azure_arm import FakeAzure
from .loopback import Answer, LoopbackServer, Request

API_VERSION = "2024-10-21"
_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


def _error(status: int, code: str, message: str) -> Answer:
    return Answer(status, {"error": {"code": code, "message": message}})


class FakeAzureOpenAIData(LoopbackServer):
    def __init__(self, arm: FakeAzure, account_path: str, api_key: str) -> None:
        super().__init__()
        self.arm = arm
        self.account_path = account_path
        self.api_key = api_key
        #: When set, every answer's content (a model that says whatever it says).
        self.reply: str | None = None
        self._ids = itertools.count(1)

    def route(self, req: Request) -> Answer:
        if req.headers.get("api-key") != self.api_key:
            return _error(401, "401", "Access denied due to invalid subscription key.")
        found = _PATH.match(req.path)
        if found is None or req.method != "POST":
            return _error(404, "404", "Resource not found")
        if req.query.get("api-version") != API_VERSION:
            return _error(404, "404", "Resource not found")
        name = unquote(found.group(1))
        deployment = self.arm.deployment(self.account_path, name)
        state = (deployment or {}).get("properties", {}).get("provisioningState")
        if deployment is None or state != "Succeeded":
            return _error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        messages = req.body.get("messages") if isinstance(req.body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "BadRequest", "'messages' is a required property")
        content = self.reply if self.reply is not None else f"echo: {messages[-1].get('content')}"
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion = len(content.split())
        model: Any = deployment.get("properties", {}).get("model", {}).get("name")
        return Answer(
            200,
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": 1733500000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )
