"""Modal: the scaling of a function that `modal deploy` deployed, through Modal's SDK.

Modal publishes no REST API: the `modal` SDK speaks gRPC to its control plane, so this
provider uses the SDK (an optional extra: `pip install 'ai-reconciler[modal]'`),
imported on first use so that reconciler works without it. It does not deploy code:
`modal deploy` builds the image and registers the functions; reconciler manages what a
deployed function's autoscaler takes, as the model-deployment system did.

What maps to what (README "Modal functions", docs/providers.md):

    modal.app, modal.function   the deployed app and function (`Function.from_name`)
    modal.environment           the Modal environment (else config.environment, else
                                the workspace's default)
    scaling.minReplicas         min_containers   (Function.autoscaler.update)
    scaling.maxReplicas         max_containers
    modal.bufferContainers      buffer_containers
    modal.scaledownWindow       scaledown_window (2 to 3600 s)

A field the manifests leave out is not sent, and not compared for drift. `modal deploy`
resets the autoscaler to the decorator's values (Modal's documented behaviour): drift
shows that, and `drift --heal` applies the manifests' again.

Ownership: the app's tag `reconciler.<function>` = `<environment>.<deployment>`, set
when a deployment first adopts the function (`App.set_tags`, the whole set, so the
others are kept), and the app id recorded in the provider id. A function whose tag
names another deployment is refused. Deleting stops the app (`App.stop`): every
function in it stops, which the plan says; while another deployment's tag remains on
the app, deleting only removes this one's tag.

Readiness is the app's state: deployed Healthy, initializing Progressing, stopping,
stopped and disabled Degraded (reconciler stops an app only to delete it), an app of
`modal run`/`modal serve` (ephemeral, detached) Degraded.

Every SDK call runs on this provider's own event loop thread and is bounded by
config.timeoutSeconds. The SDK itself retries transient failures and waits out Modal's
throttling (RESOURCE_EXHAUSTED with a retry policy), which it logs; a wait that would
pass the deadline fails the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from reconciler.errors import ProviderError
from reconciler.instances import Instance, ProviderConfig
from reconciler.providers.base import DeleteRule, HealthStatus, LiveObject, Problem, Provider
from reconciler.providers.vendor import (
    POLL_INTERVAL_KEY,
    ConfigReader,
    overlay,
    unused_fields,
)
from reconciler.redaction import Register, to_backstop
from reconciler.vocabulary import Health

T = TypeVar("T")

SERVER_URL = "https://api.modal.com"
INSTALL = "pip install 'ai-reconciler[modal]'"
DEFAULT_TIMEOUT = 30.0
#: Modal's names (modal/_utils/name_utils.py): apps and tags.
APP_NAME = re.compile(r"[a-zA-Z0-9._-]{1,64}")
APP_ID = re.compile(r"ap-[a-zA-Z0-9]{22}")
ENVIRONMENT = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}")
FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TAG = re.compile(r"[a-zA-Z0-9._-]{1,63}")
TAG_PREFIX = "reconciler."
#: app state (modal.types.AppState values) → health.
HEALTH: dict[str, Health] = {
    "deployed": "Healthy",
    "initializing": "Progressing",
    "stopping": "Degraded",
    "stopped": "Degraded",
    "disabled": "Degraded",
    "ephemeral": "Degraded",
    "detached": "Degraded",
}
WHY: dict[str, str] = {
    "stopping": "the app is stopping (reconciler stops an app only to delete it; "
    "`modal deploy` starts it again)",
    "stopped": "the app is stopped (reconciler stops an app only to delete it; "
    "`modal deploy` starts it again)",
    "disabled": "Modal has disabled the app",
    "ephemeral": "the app is a `modal run`/`modal serve` app, not a deployed one",
    "detached": "the app is a detached `modal run` app, not a deployed one",
}
#: block key → Modal's autoscaler setting, for the fields of the `modal` block.
BLOCK_SETTINGS = {"bufferContainers": "buffer_containers", "scaledownWindow": "scaledown_window"}
SCALING_SETTINGS = {"minReplicas": "min_containers", "maxReplicas": "max_containers"}
_UNUSED = {
    "prompt": "a Modal function runs the code `modal deploy` deployed; a prompt belongs to "
    "that code (or a langfuse provider)",
    "options": "sampling options are the deployed code's, not the function's settings",
    "endpoint": "a Modal function's URL is given by its code (a web endpoint decorator)",
    "env": "a Modal function's environment comes from its code and Modal secrets",
    "timeoutSeconds": "a Modal function's timeout is set in its code; `modal deploy` changes it",
    "enabled": "stopping a Modal app is deleting the deployment here; scaling.minReplicas: "
    "0 lets the function scale to zero when idle",
}


@dataclass(frozen=True)
class Settings:
    server_url: str
    environment: str
    timeout: float
    token_id_env: str
    token_secret_env: str


@dataclass(frozen=True)
class Target:
    """The deployed function an instance names."""

    environment: str
    app: str
    function: str

    def provider_id(self, app_id: str) -> str:
        return f"{self.environment}/{self.app}/{self.function}/{app_id}"

    @staticmethod
    def parse(provider_id: str) -> tuple[Target, str] | None:
        parts = provider_id.split("/")
        if len(parts) != 4 or not APP_ID.fullmatch(parts[3]):
            return None
        return Target(parts[0], parts[1], parts[2]), parts[3]

    def label(self) -> str:
        where = f" in environment {self.environment!r}" if self.environment else ""
        return f"Modal function {self.app}/{self.function}{where}"


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("modal")
    return value if isinstance(value, Mapping) else {}


def tag_key(function: str) -> str:
    return f"{TAG_PREFIX}{function}"


def tag_value(name: str, environment: str) -> str:
    return f"{environment}.{name}"


def wanted_settings(spec: Mapping[str, Any]) -> dict[str, int]:
    """The autoscaler settings the manifests set, in Modal's names; what they leave
    out is absent."""
    out: dict[str, int] = {}
    scaling = spec.get("scaling")
    if isinstance(scaling, Mapping):
        for key, theirs in SCALING_SETTINGS.items():
            if scaling.get(key) is not None:
                out[theirs] = int(scaling[key])
    b = block(spec)
    for key, theirs in BLOCK_SETTINGS.items():
        if b.get(key) is not None:
            out[theirs] = int(b[key])
    return out


def _sdk() -> Any:
    """The `modal` package, or a ProviderError saying how to install it."""
    try:
        import modal
    except ImportError:
        raise ProviderError(
            "the modal provider needs the Modal SDK, which is not installed: "
            f"{INSTALL} (or pip install 'modal>=1.6')"
        ) from None
    return modal


class _Loop:
    """A private event loop on a daemon thread: the SDK's async interface runs there,
    so a call can be bounded by a deadline and cancelled, from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="reconciler-modal", daemon=True
        )
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result(timeout + 5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class ModalProvider(Provider):
    """Deployed Modal functions' autoscaler settings; config: environment, serverUrl,
    timeoutSeconds, pollIntervalSeconds; credentials: tokenIdEnv, tokenSecretEnv."""

    type_name: ClassVar[str] = "modal"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "modal.app": "the app and function are the deployment's address on Modal",
        "modal.function": "the app and function are the deployment's address on Modal",
        "modal.environment": "a Modal environment holds its own apps",
    }
    #: An update takes effect at once; a just-deployed app may still be initializing.
    readiness_timeout: ClassVar[float] = 300.0
    poll_interval: ClassVar[float] = 5.0

    def __init__(
        self,
        config: ProviderConfig,
        *,
        repo_root: Path,
        env: Mapping[str, str],
        register: Register = to_backstop,
    ) -> None:
        super().__init__(config, repo_root=repo_root, env=env, register=register)
        reader = ConfigReader(
            config,
            {"serverUrl", "environment", "timeoutSeconds", POLL_INTERVAL_KEY},
            {"tokenIdEnv", "tokenSecretEnv"},
        )
        self.settings = Settings(
            server_url=reader.url("serverUrl", SERVER_URL),
            environment=reader.text(
                "environment", pattern=ENVIRONMENT, hint="a Modal environment name"
            ),
            timeout=reader.number("timeoutSeconds", DEFAULT_TIMEOUT),
            token_id_env=reader.credential("tokenIdEnv", "MODAL_TOKEN_ID"),
            token_secret_env=reader.credential("tokenSecretEnv", "MODAL_TOKEN_SECRET"),
        )
        self._poll_interval = reader.number(POLL_INTERVAL_KEY, float(self.poll_interval))
        self.problems: list[Problem] = reader.problems
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._client: Any = None
        self._secrets: tuple[str, ...] = ()

    def polling_interval(self) -> float:
        return self._poll_interval

    # -- plan time ---------------------------------------------------------------------------

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        b = block(body)
        app, function = b.get("app") or "?", b.get("function") or "?"
        return DeleteRule(
            note=f"stops Modal app {app!r}: every function in it stops serving, not only "
            f"{function!r}, until `modal deploy` deploys it again (while another deployment "
            "still manages a function of that app, deleting only lets go of this one)"
        )

    def target(self, inst: Instance) -> Target:
        b = block(inst.spec)
        environment = str(b.get("environment") or self.settings.environment)
        return Target(environment, str(b.get("app") or ""), str(b.get("function") or ""))

    def identity(self, inst: Instance) -> str | None:
        """A function is one object, whichever deployment names it; two workspaces
        behind two tokens are taken as one when their variables are the same."""
        if inst.kind != "Deployment":
            return None
        t = self.target(inst)
        return (
            f"{self.settings.server_url} {t.environment or '(default)'}/{t.app}/{t.function} "
            f"with the token in {self.settings.token_id_env}"
        )

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems: list[str | Problem] = list(self.problems)
        label = f"provider {self.name!r} (modal)"
        if inst.kind != "Deployment":
            problems.append(Problem(f"{label} manages deployed functions; it runs no schedules"))
            return problems
        problems.extend(unused_fields(inst, self.name, "modal", _UNUSED))
        b = block(inst.spec)
        app, function, environment = b.get("app"), b.get("function"), b.get("environment")
        if not app:
            problems.append(
                Problem(
                    f"{label}: modal.app is required: the name of the app `modal deploy` deployed",
                    ("modal",) if b else (),
                )
            )
        elif not APP_NAME.fullmatch(str(app)) or APP_ID.fullmatch(str(app)):
            problems.append(
                Problem(
                    f"modal.app {app!r} is not a Modal app name: up to 64 letters, digits, "
                    "'-', '_' or '.'",
                    ("modal", "app"),
                )
            )
        if not function:
            problems.append(
                Problem(
                    f"{label}: modal.function is required: the name of the deployed function",
                    ("modal",) if b else (),
                )
            )
        elif not FUNCTION.fullmatch(str(function)) or not TAG.fullmatch(tag_key(str(function))):
            problems.append(
                Problem(
                    f"modal.function {function!r} is not a function name reconciler can mark "
                    f"(a Python name of at most {63 - len(TAG_PREFIX)} characters)",
                    ("modal", "function"),
                )
            )
        if environment is not None and not ENVIRONMENT.fullmatch(str(environment)):
            problems.append(
                Problem(
                    f"modal.environment {environment!r} is not a Modal environment name",
                    ("modal", "environment"),
                )
            )
        if not TAG.fullmatch(tag_value(inst.name, inst.environment)):
            problems.append(
                f"{label}: {inst.environment}.{inst.name} is longer than a Modal tag value "
                "(63 characters), which marks the function as this deployment's"
            )
        scaling = inst.spec.get("scaling")
        if isinstance(scaling, Mapping) and scaling.get("hardware"):
            problems.append(
                Problem(
                    f"{label} has no place for scaling.hardware: a Modal function's GPU is set "
                    "in its code (`gpu=`), and `modal deploy` changes it",
                    ("scaling", "hardware"),
                )
            )
        return problems

    # -- the SDK -------------------------------------------------------------------------------

    def _run(self, what: str, call: Callable[[Any, Any], Awaitable[T]]) -> T:
        """`call(modal, client)` on the private loop within config.timeoutSeconds, its
        failures as one-line ProviderErrors; Modal's NotFoundError is left to callers."""
        modal = _sdk()
        loop, client = self._open(modal)
        timeout = self.settings.timeout
        try:
            return loop.run(call(modal, client), timeout)
        except modal.exception.NotFoundError:
            raise
        except TimeoutError:  # asyncio.wait_for, and the future's own wait
            raise self.error(
                what,
                f"no answer within {timeout:g} s (config.timeoutSeconds); the SDK retries "
                "failures and waits while Modal throttles, so Modal may be asking to slow down",
            ) from None
        except modal.exception.AuthError as e:
            raise self.error(
                what,
                f"Modal refused the token ({self._words(e)}): check the token id in "
                f"{self.settings.token_id_env} and the secret in {self.settings.token_secret_env}",
            ) from None
        except modal.exception.InvalidError as e:
            raise self.error(what, f"Modal refused it: {self._words(e)}") from None
        except modal.exception.Error as e:
            raise self.error(what, f"{type(e).__name__}: {self._words(e)}") from None
        except OSError as e:
            raise self.error(
                what, f"cannot reach Modal at {self.settings.server_url}: {self._words(e)}"
            ) from None

    @staticmethod
    def _words(e: BaseException) -> str:
        return " ".join(str(e).split()) or type(e).__name__

    def _open(self, modal: Any) -> tuple[_Loop, Any]:
        """The loop and an opened client, made on first use so a plan needs no token."""
        with self._lock:
            if self._loop is not None:
                return self._loop, self._client
            if self.problems:
                prefix = f"provider {self.name!r}: "
                raise ProviderError(
                    f"provider {self.name!r} is misconfigured: "
                    + "; ".join(p.message.removeprefix(prefix) for p in self.problems)
                )
            s = self.settings
            token_id = self._credential(s.token_id_env, "a Modal token id")
            secret = self._credential(s.token_secret_env, "a Modal token secret")
            self._secrets = (token_id, secret)
            from modal_proto import api_pb2

            loop = _Loop()
            client = modal.Client(s.server_url, api_pb2.CLIENT_TYPE_CLIENT, (token_id, secret))

            async def enter() -> Any:
                return await client.__aenter__()

            try:
                loop.run(enter(), s.timeout)
            except Exception as e:
                loop.close()
                raise self.error(
                    "opening a client", f"cannot connect to {s.server_url}: {self._words(e)}"
                ) from None
            self._loop, self._client = loop, client
            return loop, client

    def _credential(self, var: str, what: str) -> str:
        value = (self._env.get(var) or "").strip()
        if not value:
            raise ProviderError(
                f"provider {self.name!r}: environment variable {var} is not set ({what})"
            )
        self.register_found([value])
        return value

    def error(self, what: str, problem: str) -> ProviderError:
        """A ProviderError naming this provider and `what`, with no credential in it."""
        text = f"provider {self.name!r} ({what}): {problem}"
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return ProviderError(text)

    def _find(self, t: Target) -> dict[str, Any] | None:
        """The deployed app and function `t` names, with its tags and autoscaler
        settings; None when either is not deployed."""

        async def find(modal: Any, client: Any) -> dict[str, Any]:
            env = t.environment or None
            app = await modal.App.lookup.aio(t.app, environment_name=env, client=client)
            info = await app.info.aio()
            found: dict[str, Any] = {
                "appId": info.app_id,
                "state": info.lifecycle.state.value,
                "version": info.lifecycle.version,
                "functions": sorted(info.functions),
            }
            if t.function not in info.functions:
                return found
            fn = modal.Function.from_name(t.app, t.function, environment_name=env, client=client)
            settings = await fn.autoscaler.settings.aio()
            found["tags"] = await app.get_tags.aio(client=client)
            found["autoscaler"] = {
                "min_containers": settings.min_containers,
                "max_containers": settings.max_containers,
                "buffer_containers": settings.buffer_containers,
                "scaledown_window": settings.scaledown_window,
            }
            return found

        modal = _sdk()
        try:
            return self._run(f"looking up {t.label()}", find)
        except modal.exception.NotFoundError:
            return None

    def _app_state(self, app_id: str) -> tuple[str, list[str], dict[str, str]] | None:
        """The state of the app with this id (stopped ones too), its functions and tags."""

        async def state(modal: Any, client: Any) -> tuple[str, list[str], dict[str, str]]:
            app = await modal.App.lookup.aio(app_id, client=client)
            info = await app.info.aio()
            tags = await app.get_tags.aio(client=client)
            return str(info.lifecycle.state.value), sorted(info.functions), dict(tags)

        modal = _sdk()
        try:
            return self._run(f"reading app {app_id}", state)
        except modal.exception.NotFoundError:
            return None

    def _set_tags(self, t: Target, app_id: str, tags: Mapping[str, str]) -> None:
        async def put(modal: Any, client: Any) -> None:
            app = await modal.App.lookup.aio(app_id, client=client)
            await app.set_tags.aio(dict(tags), client=client)

        self._run(f"marking {t.label()}", put)

    def _update(self, t: Target, settings: Mapping[str, int]) -> None:
        async def update(modal: Any, client: Any) -> None:
            env = t.environment or None
            fn = modal.Function.from_name(t.app, t.function, environment_name=env, client=client)
            await fn.autoscaler.update.aio(**settings)

        modal = _sdk()
        try:
            self._run(f"updating {t.label()}'s autoscaler", update)
        except modal.exception.NotFoundError as e:
            raise self.error(t.label(), f"gone while updating it: {self._words(e)}") from None

    def _stop(self, t: Target, app_id: str) -> None:
        async def stop(modal: Any, client: Any) -> None:
            app = await modal.App.lookup.aio(app_id, client=client)
            await app.stop.aio(client=client)

        modal = _sdk()
        try:
            self._run(f"stopping app {t.app} ({app_id})", stop)
        except modal.exception.NotFoundError:
            return

    # -- ownership and writes ----------------------------------------------------------------

    def _check_owner(self, t: Target, live: Mapping[str, Any], name: str, env: str) -> None:
        mark = (live.get("tags") or {}).get(tag_key(t.function))
        if mark is None or mark == tag_value(name, env):
            return
        raise self.error(
            f"deployment.{name}",
            f"{t.label()} is managed by {mark.replace('.', ' deployment.', 1)} (its app's tag "
            f"{tag_key(t.function)} says {mark!r}); nothing was changed. Name another function, "
            "or remove that tag if that deployment is gone",
        )

    def _write(self, inst: Instance, t: Target, live: Mapping[str, Any]) -> str:
        self._check_owner(t, live, inst.name, inst.environment)
        app_id = str(live["appId"])
        tags = dict(live.get("tags") or {})
        mark = tag_value(inst.name, inst.environment)
        if tags.get(tag_key(t.function)) != mark:
            self._set_tags(t, app_id, {**tags, tag_key(t.function): mark})
        want = wanted_settings(inst.spec)
        have = live.get("autoscaler") or {}
        if any(have.get(k) != v for k, v in want.items()):
            self._update(t, want)
        return t.provider_id(app_id)

    def _require(self, inst: Instance, t: Target) -> dict[str, Any]:
        """The deployed function, or an error telling the user to deploy it."""
        live = self._find(t)
        if live is None:
            raise self.error(
                inst.key.address,
                f"no deployed Modal app {t.app!r}"
                + (f" in environment {t.environment!r}" if t.environment else "")
                + ": run `modal deploy` for it first (reconciler manages a deployed "
                "function's scaling; it does not deploy code)",
            )
        if "autoscaler" not in live:
            have = ", ".join(live.get("functions") or []) or "none"
            raise self.error(
                inst.key.address,
                f"Modal app {t.app!r} has no function {t.function!r} (it has: {have}); deploy "
                "it with `modal deploy`, or name one of those in modal.function",
            )
        state = str(live.get("state"))
        if state in ("ephemeral", "detached"):
            raise self.error(inst.key.address, f"{t.label()}: {WHY[state]}; nothing was changed")
        return live

    # -- the contract --------------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        """Without a recorded id there is nothing to read: which app an instance names
        is in its manifest, not in its key."""
        parsed = Target.parse(provider_id) if provider_id else None
        if parsed is None:
            return None
        t, app_id = parsed
        live = self._find(t)
        if live is None or live["appId"] != app_id or "autoscaler" not in live:
            return None  # stopped, redeployed as a new app, or the function removed
        return LiveObject(provider_id or "", live)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        parsed = Target.parse(provider_id) if provider_id else None
        if parsed is None:
            return HealthStatus("Missing", "nothing recorded")
        t, app_id = parsed
        found = self._app_state(app_id)
        if found is None:
            return HealthStatus("Missing", f"no Modal app {app_id}")
        state, functions, tags = found
        if state in ("stopping", "stopped") and tag_key(t.function) not in tags:
            return HealthStatus("Missing", f"Modal app {t.app!r} ({app_id}) was let go and stopped")
        health = HEALTH.get(state, "Progressing")
        if health == "Healthy" and t.function not in functions:
            return HealthStatus("Missing", f"app {t.app!r} no longer has {t.function!r}")
        return HealthStatus(health, WHY.get(state, state))

    def create(self, inst: Instance) -> str:
        t = self.target(inst)
        return self._write(inst, t, self._require(inst, t))

    def update(self, inst: Instance, provider_id: str) -> None:
        t = self.target(inst)
        parsed = Target.parse(provider_id)
        if parsed is None or parsed[0] != t:
            raise self.error(
                inst.key.address,
                f"recorded as {provider_id}, but the manifests now name "
                f"{t.provider_id('…')}; that is a replace, which `reconciler plan` shows: "
                "re-plan",
            )
        live = self._find(t)
        if live is None or live["appId"] != parsed[1] or "autoscaler" not in live:
            raise self.error(
                inst.key.address,
                f"{t.label()} (app {parsed[1]}) is no longer deployed (stopped, or deployed "
                "anew as another app, outside reconciler); `reconciler drift --heal` adopts "
                "the deployed one",
            )
        self._write(inst, t, live)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        parsed = Target.parse(provider_id) if provider_id else None
        if parsed is None:
            return  # nothing was adopted
        t, app_id = parsed
        live = self._find(t)
        if live is None or live["appId"] != app_id:
            return  # stopped already, or the name is another app's now: not ours
        tags = dict(live.get("tags") or {})
        self._check_owner(t, live, name, environment)
        others = {
            k: v for k, v in tags.items() if k.startswith(TAG_PREFIX) and k != tag_key(t.function)
        }
        if tag_key(t.function) in tags:  # let go first: a stopped app still marked
            tags.pop(tag_key(t.function))  # was stopped by someone else (status: Degraded)
            self._set_tags(t, app_id, tags)
        if not others:
            self._stop(t, app_id)

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        want = wanted_settings(recorded)
        have = live.body.get("autoscaler") or {}
        names = {v: f"scaling.{k}" for k, v in SCALING_SETTINGS.items()}
        names.update({v: f"modal.{k}" for k, v in BLOCK_SETTINGS.items()})
        return overlay(recorded, [(names[k], v, have.get(k)) for k, v in want.items()])

    def close(self) -> None:
        with self._lock:
            loop, client = self._loop, self._client
            self._loop = self._client = None
        if loop is None:
            return

        async def leave() -> None:
            await client.__aexit__(None, None, None)

        with contextlib.suppress(Exception):  # best effort: the process may be ending
            loop.run(leave(), 5.0)
        loop.close()
