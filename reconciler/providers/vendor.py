"""What the vendor providers (langfuse, azure-openai, huggingface, predibase) share.

Each reads its Provider's `config` and `credentials` once, collecting every problem as
a located `Problem` (plan time, no network); makes its HTTP client on first use (so a
plan needs no token); names itself in every error; and maps the vendor's object back
onto a recorded body for drift (`overlay`). Tests inject `sleep`, `clock` and `rng`.
"""

from __future__ import annotations

import abc
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import httpx

from reconciler.errors import ProviderError
from reconciler.httpclient import Explain, Failure, HttpClient, Retry, plural, retry_after
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import Problem, Provider, RetryAfter, resolve_secrets
from reconciler.redaction import Register, to_backstop

Sleep = Callable[[float], None]
Clock = Callable[[], float]
S = TypeVar("S")

_MAX_RETRIES = 20
#: Answers to a health poll that mean "ask again later" (see VendorProvider.poll_later).
POLL_LATER = (429, 503)
#: The config key every vendor provider takes for the pause between health polls.
POLL_INTERVAL_KEY = "pollIntervalSeconds"
#: The config key every vendor provider takes for the longest one request may wait
#: between its attempts in total, a server's Retry-After included.
MAX_WAIT_KEY = "maxRetryWaitSeconds"
#: Ten minutes: Langfuse's and ARM's limits are per minute; a longer wait is better
#: reported than slept on (a run deadline, when set, bounds it further).
DEFAULT_MAX_WAIT = 600.0
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigReader:
    """Reads a Provider's `config` and `credentials`, one problem per bad value."""

    def __init__(
        self, config: ProviderConfig, known: Iterable[str], credentials: Iterable[str]
    ) -> None:
        self.pc = config
        self.problems: list[Problem] = []
        self._label = f"provider {config.name!r}"
        known_set, cred_set = frozenset(known), frozenset(credentials)
        takes = ", ".join(sorted(known_set))
        for k in sorted(set(config.config) - known_set):
            self.problem(
                ("config", k),
                f"unknown config key {k!r} (the {config.type} provider takes: {takes})",
            )
        for k in sorted(set(config.credentials) - cred_set):
            self.problem(
                ("credentials", k),
                f"unknown credentials key {k!r} (the {config.type} provider takes: "
                f"{', '.join(sorted(cred_set))})",
            )

    def problem(self, field: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(f"{self._label}: {message}", field, on="provider"))

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
        required: str = "",
    ) -> str:
        """config.<key> as text; `required` is the example shown when it is missing."""
        value = self.pc.config.get(key, default)
        if value is None:
            if required:
                self.problem(("config", key), f"config.{key} is required (e.g. {required})")
            return ""
        if not isinstance(value, str) or not value:
            self.problem(("config", key), f"config.{key} must be non-empty text")
            return ""
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(("config", key), f"config.{key} {value!r} is not valid: {hint}")
            return ""
        return value

    def url(self, key: str, default: str | None = None, *, required: str = "") -> str:
        """config.<key> as an http(s) base URL without query or fragment, no trailing '/'."""
        value = self.text(key, default, required=required)
        if not value:
            return ""
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError, ValueError):
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            self.problem(("config", key), f"config.{key} must be an http(s) URL, got {value!r}")
            return ""
        if url.query or url.fragment or url.userinfo:
            self.problem(
                ("config", key),
                f"config.{key} must not carry a query, a fragment or credentials, got a URL "
                "that does (credentials go in `credentials` as environment variable names)",
            )
            return ""
        return value.rstrip("/")

    def number(self, key: str, default: float) -> float:
        value = self.pc.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.problem(("config", key), f"config.{key} must be a positive number, got {value!r}")
            return default
        return float(value)

    def integer(self, key: str, default: int, lo: int = 0, hi: int = _MAX_RETRIES) -> int:
        value = self.pc.config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(
                ("config", key),
                f"config.{key} must be a whole number from {lo} to {hi}, got {value!r}",
            )
            return default
        return value

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        options = tuple(choices)
        value = self.pc.config.get(key, default)
        if value not in options:
            self.problem(
                ("config", key), f"config.{key} must be one of {', '.join(options)}, got {value!r}"
            )
            return default
        return str(value)

    def credential(self, key: str, example: str) -> str:
        """The *name* of the environment variable credentials.<key> points to."""
        var = self.pc.credentials.get(key)
        if var is None:
            self.problem(
                ("credentials", key),
                f"credentials.{key} is required: the name of the environment variable that "
                f"holds it (e.g. {key}: {example})",
            )
            return ""
        if not _ENV_VAR.fullmatch(var):
            self.problem(
                ("credentials", key), f"credentials.{key} must name an environment variable"
            )
            return ""
        return var


def secret_from_env(env: Mapping[str, str], var: str, provider: str, what: str) -> str:
    """The value of `var`, which must be set and fit in an HTTP header."""
    value = (env.get(var) or "").strip()
    if not value:
        raise ProviderError(
            f"provider {provider!r}: environment variable {var} is not set ({what})"
        )
    if not value.isascii() or not value.isprintable():
        raise ProviderError(
            f"provider {provider!r}: the value of {var} has characters an HTTP header cannot carry"
        )
    return value


@dataclass(frozen=True)
class ClientOptions:
    """How a vendor provider's HTTP client is made (see reconciler.httpclient)."""

    base_url: str
    deadline: float
    retries: int
    headers: Mapping[str, str]
    secrets: tuple[str, ...] = ()
    #: HTTP Basic (user, password), or an httpx.Auth that sets each request's header
    #: (a token that is refreshed: Azure's).
    auth: tuple[str, str] | httpx.Auth | None = None
    statuses: frozenset[int] = frozenset()
    auth_hint: str | None = None
    #: The vendor's own words in an error answer, when the client's usual reading of
    #: `error`/`message` would miss them (Langfuse's `error` is a class name).
    server_message: Callable[[httpx.Response], str] | None = None


class BearerSettings(Protocol):
    """What a vendor whose API takes one bearer token reads from its config."""

    @property
    def base_url(self) -> str: ...
    @property
    def token_env(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def retries(self) -> int: ...


def bearer_options(
    provider: VendorProvider[Any], settings: BearerSettings, what: str, path: str
) -> ClientOptions:
    """The client of a vendor whose API takes `Authorization: Bearer <token>` from the
    variable `credentials.tokenEnv` names (`what` says what the token is), at
    `baseUrl` + `path`."""
    token = secret_from_env(provider._env, settings.token_env, provider.name, what)
    return ClientOptions(
        base_url=f"{settings.base_url}{path}",
        deadline=settings.timeout,
        retries=settings.retries,
        headers={"Authorization": f"Bearer {token}"},
        secrets=(token,),
        auth_hint=f"check the token in {settings.token_env}",
    )


def explain_with(
    label: str, server_message: Callable[[httpx.Response], str], auth_hint: str | None
) -> Explain:
    """The shared client's wording, with the vendor's own reading of an error answer."""

    def explain(f: Failure) -> tuple[str, str | None]:
        head = f"{label} ({f.request}): {f.problem}"
        if f.kind == "status" and f.response is not None:
            if f.response.status_code in (401, 403) and auth_hint:
                head += f" ({auth_hint})"
            msg = server_message(f.response)
            return (f"{head}: {msg}" if msg else head), None
        if f.kind == "exhausted":
            return f"{head} after {plural(f.attempts, 'attempt')}", None
        if f.kind == "unsafe":
            return f"{head} (not retried: it may have been applied)", None
        return head, None

    return explain


class VendorProvider(Provider, Generic[S]):
    """A provider on one vendor's REST API: settings read once, a lazy HTTP client."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        register: Register = to_backstop,
    ) -> None:
        super().__init__(config, repo_root=repo_root, env=env, register=register)
        #: How retries and long-running operations wait; tests inject a recorder.
        self.sleep: Sleep = sleep or time.sleep
        self.clock: Clock = clock or time.time
        self._random = rng or random.Random()
        self._client_lock = threading.Lock()
        self._client: HttpClient | None = None
        reader = ConfigReader(
            config, self.config_keys() | {POLL_INTERVAL_KEY, MAX_WAIT_KEY}, self.credential_keys()
        )
        self.settings: S = self.read_settings(reader)
        self._poll_interval = reader.number(POLL_INTERVAL_KEY, float(self.poll_interval))
        self._max_wait = reader.number(MAX_WAIT_KEY, DEFAULT_MAX_WAIT)
        self.problems: list[Problem] = reader.problems

    def deployment_problems(
        self, inst: Instance, unused: Mapping[str, str], serves: str = "serves models"
    ) -> list[str | Problem]:
        """Where a vendor of deployments starts validating: its settings' problems, a
        schedule refused (it runs none), and each field it has no place for."""
        problems: list[str | Problem] = list(self.problems)
        if inst.kind != "Deployment":
            label = f"provider {self.name!r} ({self.type_name})"
            problems.append(Problem(f"{label} {serves}; it runs no schedules"))
        else:
            problems.extend(unused_fields(inst, self.name, self.type_name, unused))
        return problems

    def polling_interval(self) -> float:
        return self._poll_interval

    def poll_later(self, resp: httpx.Response) -> None:
        """A 429 or 503 answer to a health poll raises RetryAfter: apply asks again
        after the vendor's `Retry-After` (else one poll interval) without a worker
        sleeping meanwhile, where the client would have slept inside the call."""
        if resp.status_code not in POLL_LATER:
            return
        seconds = retry_after(resp.headers.get("retry-after"), self.clock)
        wait = self._poll_interval if seconds is None else max(0.0, seconds)
        raise RetryAfter(
            wait,
            f"provider {self.name!r}: {resp.status_code} to a health poll; asked to poll "
            f"again in {wait:g} s",
        )

    # -- what each vendor says ---------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def config_keys(cls) -> frozenset[str]:
        """The config keys this provider takes."""

    @classmethod
    @abc.abstractmethod
    def credential_keys(cls) -> frozenset[str]:
        """The credentials keys this provider takes."""

    @abc.abstractmethod
    def read_settings(self, reader: ConfigReader) -> S:
        """The provider's settings; problems go to `reader`."""

    @abc.abstractmethod
    def client_options(self) -> ClientOptions:
        """Base URL, credentials and retry policy (called once, at first use)."""

    # -- plumbing ----------------------------------------------------------------------

    def http(self) -> HttpClient:
        """The client, made on first use so plan-time validate needs no token."""
        with self._client_lock:
            if self._client is not None:
                return self._client
            if self.problems:
                prefix = f"provider {self.name!r}: "
                raise ProviderError(
                    f"provider {self.name!r} is misconfigured: "
                    + "; ".join(p.message.removeprefix(prefix) for p in self.problems)
                )
            o = self.client_options()
            self._client = HttpClient(
                register=self.register_found,
                label=f"provider {self.name!r}",
                base_url=o.base_url,
                headers={"Accept": "application/json", "User-Agent": "reconciler", **o.headers},
                auth=o.auth,
                secrets=o.secrets,
                deadline=o.deadline,
                deadline_source="config.timeoutSeconds",
                retry=Retry(retries=o.retries, statuses=o.statuses, max_wait=self._max_wait),
                error=ProviderError,
                auth_hint=o.auth_hint,
                explain=(
                    explain_with(f"provider {self.name!r}", o.server_message, o.auth_hint)
                    if o.server_message is not None
                    else None
                ),
                env=self._env,
                sleep=self.sleep,
                clock=self.clock,
                rng=self._random.random,
            )
            return self._client

    def error(self, what: str, problem: str) -> ProviderError:
        """A ProviderError naming this provider and `what` (an object or a request)."""
        text = f"provider {self.name!r} ({what}): {problem}"
        return ProviderError(self._client.scrub(text) if self._client else text)

    def resolved(self, inst: Instance) -> dict[str, Any]:
        """`inst`'s spec with secret references replaced by their values (registered
        for redaction first)."""
        try:
            return resolve_secrets(inst.spec, self._env, self.register_found)
        except ProviderError as e:
            raise ProviderError(
                f"provider {self.name!r}: {inst.key.address}: {e.message}"
            ) from None

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def unused_fields(
    inst: Instance, provider: str, ptype: str, fields: Mapping[str, str]
) -> list[Problem]:
    """A problem for each field `inst` sets that this vendor has no place for (a field
    silently ignored would read as applied): `fields` maps a spec key to why."""
    out = []
    for key, why in fields.items():
        value = inst.spec.get(key)
        if value is None or value == {} or (key == "enabled" and value is True):
            continue
        out.append(
            Problem(f"provider {provider!r} ({ptype}) has no place for `{key}`: {why}", (key,))
        )
    return out


# -- mapping a vendor's object back onto a body ---------------------------------------

_ABSENT: Any = object()


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path, or None."""
    node = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path, making (copies of) the mappings on the way; `_ABSENT` removes."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    if value is _ABSENT:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def overlay(recorded: Mapping[str, Any], fields: Iterable[tuple[str, Any, Any]]) -> dict[str, Any]:
    """`recorded` with each (body path, want, have) whose vendor value `have` differs
    from the one the record implies, `want`, set to `have`: what drift then shows, in
    the manifests' own field names. Fields a vendor does not keep stay as recorded."""
    out = dict(recorded)
    for path, want, have in fields:
        if want != have:
            set_path(out, path, have)
    return out


ABSENT = _ABSENT
