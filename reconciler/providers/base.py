"""The provider plugin contract: what apply and drift call, and nothing more.

Every call is idempotent by the instance key (environment, kind, name): re-running a
change after a crash must converge, never create a second object.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig, secret_ref
from reconciler.redaction import Register, to_backstop
from reconciler.vocabulary import Health


@dataclass(frozen=True)
class HealthStatus:
    """A live object's health and, when not Healthy, why (the vendor's own words)."""

    health: Health
    message: str = ""


class RetryAfter(ProviderError):
    """Raised by `status()` when the vendor asks to be asked again later (a 429 or 503
    with `Retry-After`): apply polls that object again after `seconds`, holding no
    worker meanwhile, instead of the provider sleeping inside the call."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"asked to poll again in {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Problem:
    """A plan-time problem and where its value was written, so it can be reported as
    `file:line:col`. `field` is a path under the Provider's `spec` (`("config",
    "account")`, `("credentials", "tokenEnv")`) when `on` is "provider", or under the
    instance's `spec` (`("scaling", "hardware")`) when `on` is "instance"; the
    environment's override is named instead when the value came from there."""

    message: str
    field: tuple[str | int, ...] = ()
    on: Literal["provider", "instance"] = "instance"


@dataclass(frozen=True)
class DeleteRule:
    """What a provider says about deleting an object, shown on the plan's delete (or
    replace) line: `refused` blocks it and says why; `note` says what deleting means
    on this vendor."""

    refused: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class LiveObject:
    """What a provider runs now. `body` may hold secret values, so it stays out of reprs."""

    provider_id: str
    body: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Usage:
    """Tokens one invocation used, as the vendor reported them (None: not reported)."""

    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class InvokeTarget:
    """What is invoked: a deployment as it is recorded applied in one environment (the
    spec of record, secrets as references), never an unapplied spec."""

    environment: str
    name: str
    provider_id: str | None
    spec: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Invocation:
    """What a deployment answered: its output (text, or JSON-like data), the usage the
    vendor reported, and how long the call took in seconds."""

    output: Any = field(repr=False)
    usage: Usage = Usage()
    latency: float = 0.0


class CannotInvoke(ProviderError):
    """The provider has no way to run a deployment (its vendor exposes none, or it was
    not built yet): a clear error, exit 1."""


class Provider(abc.ABC):
    """One configured provider for one environment; safe to call from several threads."""

    type_name: ClassVar[str]
    #: Dotted body paths a provider cannot change in place (the plan replaces instead).
    immutable_fields: ClassVar[frozenset[str]] = frozenset()
    #: The same with the vendor's reason, shown on the plan's `-/+ replace` line:
    #: `{"model": "Azure OpenAI keeps a deployment's model for life"}`.
    replace_fields: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        register: Register = to_backstop,
    ) -> None:
        self.config = config
        self.repo_root = repo_root
        self._env = env
        #: Learns the secret values this client finds at run time (resolved references,
        #: tokens, auth headers): the session's redactor, through the provider factory.
        self.register_found = register

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.config.name!r}, environment={self.config.environment!r})"
        )

    #: How long apply waits for a created or updated object to become Healthy, unless
    #: a deployment sets its own; 0 means the provider is ready when its write returns.
    readiness_timeout: ClassVar[float] = 0.0
    #: Seconds between health polls while waiting (a provider's Retry-After wins).
    poll_interval: ClassVar[float] = 5.0
    #: How many of its calls can usefully run at once; None: as many as the run's
    #: parallelism. A provider that works in-process on one serialised resource says 1:
    #: more threads would only contend for the GIL (the local registry runs ~25% slower
    #: with 20 workers than with one).
    max_concurrency: ClassVar[int | None] = None

    def polling_interval(self) -> float:
        """Seconds between this configured provider's health polls: `poll_interval`,
        unless its config says otherwise (the vendor providers' `pollIntervalSeconds`)."""
        return float(self.poll_interval)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        """The live object's health. The default suits providers whose writes take
        effect at once: present is Healthy, absent is Missing."""
        live = self.read(kind, name, environment, provider_id)
        return HealthStatus("Missing" if live is None else "Healthy")

    def validate(self, inst: Instance) -> Sequence[str | Problem]:
        """Plan-time problems with `inst` on this provider (no network); empty if fine.
        A plain string is reported at the instance's document; a `Problem` at the
        field it names."""
        return []

    @classmethod
    def replace_reasons(cls) -> dict[str, str]:
        """Every field that forces a replacement, with the vendor's reason ("" when the
        provider gives none)."""
        reasons = dict.fromkeys(sorted(cls.immutable_fields), "")
        reasons.update(cls.replace_fields)
        return reasons

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        """Plan time, no network: whether deleting the object recorded with `body` is
        refused on this vendor, or what deleting it means. Default: plainly allowed."""
        return DeleteRule()

    @classmethod
    def ambient_credentials(cls, config: ProviderConfig) -> tuple[str, ...]:
        """Credentials this provider takes from the process's surroundings without a
        manifest naming a variable (a cloud identity), as names the gate can compare:
        they are part of the environment's policy like any variable read, so another
        environment sending them elsewhere needs this one's approvals. Default: none."""
        return ()

    @classmethod
    def plan_note(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> str | None:
        """Plan time, no network: what the object `body` describes becomes at the vendor,
        when the manifests leave part of it to a default a reader could mistake (shown
        on the plan's create and update lines). Default: nothing to say."""
        return None

    def identity(self, inst: Instance) -> str | None:
        """The vendor-side object `inst` maps to (e.g. an account and a deployment
        name), so that plan time can refuse two instances that would share one; None
        when objects are keyed by (environment, kind, name) alone."""
        return None

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The live object as a body comparable with `recorded` (what drift diffs).

        The default is the live body as read. A vendor that holds only part of a body
        under its own names maps what it holds back onto the recorded body: fields the
        vendor does not keep (`risk`, say) are taken from `recorded`, never reported as
        drift."""
        return dict(live.body)

    @abc.abstractmethod
    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        """The live object, or None when it does not exist."""

    @abc.abstractmethod
    def create(self, inst: Instance) -> str:
        """Create `inst` and return its provider id; if it exists already, adopt it
        (bring its body to `inst`'s) and return its id."""

    @abc.abstractmethod
    def update(self, inst: Instance, provider_id: str) -> None:
        """Replace the live body with `inst`'s."""

    @abc.abstractmethod
    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        """Remove the object; one that is already gone counts as done."""

    #: Why this provider cannot suspend a deployment (`suspended: true`), shown when
    #: validate refuses one; None when it can (it then reports such an object's health
    #: as Suspended). Refused unless a provider says otherwise: fail closed.
    suspend_refusal: ClassVar[str | None] = "it has no way to suspend a deployment"
    #: Whether `invoke` is implemented (the conformance check runs it when True).
    can_invoke: ClassVar[bool] = False

    def invoke(self, target: InvokeTarget, input: Mapping[str, Any], deadline: float) -> Invocation:
        """Run the deployment once with `input`, within `deadline` seconds: optional.
        Not idempotent (a model call costs), so an implementation never retries a
        request that may have reached the vendor."""
        raise CannotInvoke(
            f"provider {self.name!r} (type {self.type_name}) cannot invoke a deployment: "
            "it only puts deployments in place"
        )

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections; the provider is not used afterwards."""


def resolve_secrets(
    body: dict[str, Any], env: Mapping[str, str], register: Register
) -> dict[str, Any]:
    """A copy of `body` with every `{"secretEnv": NAME}` replaced by `env[NAME]`.

    `register` learns each value before it is returned, so no output can show it. A
    missing variable raises a ProviderError naming the variable only.
    """

    def walk(value: Any) -> Any:
        var = secret_ref(value)
        if var is not None:
            if var not in env:
                raise ProviderError(
                    f"environment variable {var} is not set (a secretEnv reference needs it)"
                )
            secret = env[var]
            register([secret])
            return secret
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    out: dict[str, Any] = walk(body)
    return out
