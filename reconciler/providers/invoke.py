"""What the invoking providers share: the prompt a run sends (the deployment's prompt
template rendered with the input), OpenAI-style chat messages and options, and reading
usage from an answer."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.errors import ProviderError
from reconciler.providers.base import Invocation, Usage

if TYPE_CHECKING:  # the local provider imports this module: no HTTP client for it
    from reconciler.httpclient import HttpClient

#: `{{ name }}` in a prompt template: replaced by the input's value of that name.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


def render(template: str, values: Mapping[str, Any]) -> str:
    """The template with each `{{ name }}` replaced by `values[name]` (text as is,
    anything else as JSON); a name the input lacks is an error, never left blank."""
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise ProviderError(
            f"the prompt template needs {', '.join(missing)}, which the input does not have"
        )

    def one(match: re.Match[str]) -> str:
        value = values[match.group(1)]
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    return _PLACEHOLDER.sub(one, template)


#: A deployment's `options` (manifest names) → the chat completions request's names.
CHAT_OPTIONS = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxTokens": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
}


def prompt_text(spec: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The deployment's prompt template rendered with the input; without a prompt, the
    input as JSON."""
    prompt = spec.get("prompt")
    template = prompt.get("template") if isinstance(prompt, Mapping) else None
    if isinstance(template, str):
        return render(template, data)
    return json.dumps(dict(data), sort_keys=True)


def chat_messages(spec: Mapping[str, Any], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`input.messages` when the input gives chat messages, else one user message with
    the prompt."""
    given = data.get("messages")
    if isinstance(given, list) and all(isinstance(m, dict) for m in given):
        return list(given)
    return [{"role": "user", "content": prompt_text(spec, data)}]


def chat_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    options = spec.get("options")
    if not isinstance(options, Mapping):
        return {}
    return {CHAT_OPTIONS[k]: v for k, v in options.items() if k in CHAT_OPTIONS}


def count(value: Any) -> int | None:
    """A token count as the vendor reported it; anything but a count is unknown."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def chat_output(data: Mapping[str, Any]) -> Any:
    """The first choice's message content of a chat completion (None when absent)."""
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping):
            return message.get("content")
    return None


def chat_completion(client: HttpClient, url: str, body: Mapping[str, Any]) -> Invocation:
    """One OpenAI-style chat completion (`POST .../chat/completions`), sent once: a POST
    that may have reached the server is never retried (the client retries it only when
    it never left, or on a 429). The output is the first choice's content; usage is the
    answer's `usage.prompt_tokens` and `completion_tokens` (None when not reported).
    Together's dedicated endpoints, Predibase's deployments and Text Generation
    Inference all answer in this shape."""
    started = time.monotonic()
    resp = client.request("POST", url, json=dict(body), ok=(200,), idempotent=False)
    latency = time.monotonic() - started
    data = client.json_object(resp)
    output = chat_output(data)
    if output is None:
        raise client.invalid(resp, "200 answer has no choices[0].message.content")
    raw = data.get("usage")
    usage: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    return Invocation(
        output,
        Usage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))),
        latency,
    )
