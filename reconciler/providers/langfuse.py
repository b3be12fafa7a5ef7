"""Langfuse prompt management: a deployment is a prompt version, its environment a label.

What maps to what (README "Langfuse", docs/providers.md):

    prompt name   langfuse.promptName, else the deployment's name
    label         langfuse.label, else config.label, else the environment's name (the
                  plan says which: Langfuse's SDKs fetch `production` when asked for no
                  label, so an environment named otherwise that applications read
                  unlabelled wants config.label: production)
    type          langfuse.type: text (default), or chat (the template as one system message)
    prompt        the resolved template of `prompt: name@version`
    config        {"model": model, and options in OpenAI's names: temperature, top_p,
                  max_tokens, stop, seed, presence_penalty, frequency_penalty}

Applying finds the version whose type, prompt and config equal the desired ones (the
label's own version first, then the others, newest first) and creates one only when
none does, since every POST makes a new version; then it moves the label there
(labels are unique per prompt: assigning one moves it). Re-running after a lost answer
finds the version made the first time: never two. Drift is the label pointing at
content other than the recorded one (moved in the UI, or gone). Langfuse cannot take
a label off a version, so a delete is refused in the plan unless `config.onDelete:
delete-version` lets it delete the labelled version (only when no other label points
there). Readiness is immediate; SDKs cache a prompt for 60 s by default.

API: langfuse/langfuse `fern/apis/server/definition/prompts.yml` and
`prompt-version.yml` (the public OpenAPI is generated from them): `GET
/api/public/v2/prompts/{name}?label=|version=`, `GET /api/public/v2/prompts?name=`,
`POST /api/public/v2/prompts`, `PATCH /api/public/v2/prompts/{name}/versions/{v}`
`{newLabels}` (additive), `DELETE /api/public/v2/prompts/{name}?version=`. HTTP Basic
auth: the project's public key and secret key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from reconciler.instances import Instance, ProviderConfig, canonical_json
from reconciler.providers.base import DeleteRule, HealthStatus, LiveObject, Problem
from reconciler.providers.vendor import (
    ClientOptions,
    ConfigReader,
    VendorProvider,
    get_path,
    overlay,
    secret_from_env,
    unused_fields,
)

API = "api/public/v2/prompts"
LATEST = "latest"
#: The label Langfuse's SDKs (get_prompt / getPrompt) and the API fetch when none is given.
SDK_DEFAULT_LABEL = "production"
LABEL_PATTERN = re.compile(r"[a-z0-9_.-]{1,36}")
LABEL_HINT = (
    "Langfuse labels are 1 to 36 lowercase letters, digits, '_', '-' or '.', and `latest` "
    "is Langfuse's own"
)
NAME_MAX = 255
#: Names of static pages next to the prompt pages in Langfuse's UI.
RESERVED_NAMES = frozenset({"new", "metrics", "prompt-detail"})
COMMIT_MESSAGE_MAX = 500
#: Deployment options (camelCase) → the names applications read from a prompt's config.
OPTION_NAMES: Mapping[str, str] = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxTokens": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
}
ON_DELETE = ("refuse", "delete-version")
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 4
#: Looks for (or makes) the version again after a 409 "created concurrently".
CONFLICT_ATTEMPTS = 4
_UNUSED = {
    "endpoint": "a Langfuse prompt has no endpoint; the application fetches it by label",
    "scaling": "Langfuse serves prompts; it runs no replicas",
    "env": "a Langfuse prompt has no environment variables",
    "timeoutSeconds": "a Langfuse prompt serves no requests",
    "enabled": "a Langfuse label cannot be switched off; remove the deployment instead",
}


@dataclass(frozen=True)
class Settings:
    host: str
    timeout: float
    retries: int
    label: str | None
    on_delete: str
    public_key_env: str
    secret_key_env: str


@dataclass(frozen=True)
class Target:
    """What one deployment becomes in Langfuse."""

    prompt_name: str
    label: str
    type: str
    prompt: str | list[dict[str, str]]
    config: dict[str, Any]

    @property
    def provider_id(self) -> str:
        return make_id(self.prompt_name, self.label)

    def matches(self, version: Mapping[str, Any]) -> bool:
        """Same content: type, prompt and config (compared as canonical JSON)."""
        return (
            version.get("type", "text") == self.type
            and canonical_json(version.get("prompt")) == canonical_json(self.prompt)
            and canonical_json(version.get("config") or {}) == canonical_json(self.config)
        )


def make_id(prompt_name: str, label: str) -> str:
    """`name|label`: '|' can be in neither a prompt name nor a label."""
    return f"{prompt_name}|{label}"


def parse_provider_id(ident: str) -> tuple[str, str] | None:
    name, sep, label = ident.rpartition("|")
    return (name, label) if sep and name and label else None


def read_settings(reader: ConfigReader) -> Settings:
    label = reader.text("label") or None
    if label is not None and (not LABEL_PATTERN.fullmatch(label) or label == LATEST):
        reader.problem(("config", "label"), f"config.label {label!r} is not valid: {LABEL_HINT}")
        label = None
    return Settings(
        host=reader.url("host", required="https://cloud.langfuse.com"),
        timeout=reader.number("timeoutSeconds", DEFAULT_TIMEOUT),
        retries=reader.integer("retries", DEFAULT_RETRIES),
        label=label,
        on_delete=reader.choice("onDelete", "refuse", ON_DELETE),
        public_key_env=reader.credential("publicKeyEnv", "LANGFUSE_PUBLIC_KEY"),
        secret_key_env=reader.credential("secretKeyEnv", "LANGFUSE_SECRET_KEY"),
    )


def block(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    value = spec.get("langfuse")
    return value if isinstance(value, Mapping) else {}


def target(
    name: str, environment: str, spec: Mapping[str, Any], default_label: str | None
) -> Target:
    """The Langfuse prompt a deployment's (resolved or recorded) spec stands for."""
    b = block(spec)
    kind = str(b.get("type") or "text")
    prompt = spec.get("prompt")
    text = str(prompt.get("template", "")) if isinstance(prompt, Mapping) else ""
    body: str | list[dict[str, str]] = (
        [{"role": "system", "content": text}] if kind == "chat" else text
    )
    config: dict[str, Any] = {"model": spec.get("model")}
    options = spec.get("options")
    if isinstance(options, Mapping):
        config.update({OPTION_NAMES.get(k, k): v for k, v in options.items()})
    return Target(
        prompt_name=str(b.get("promptName") or name),
        label=str(b.get("label") or default_label or environment),
        type=kind,
        prompt=body,
        config=config,
    )


def label_source(b: Mapping[str, Any], config_label: str | None, environment: str) -> str:
    """Where a deployment's label comes from, in words for the plan."""
    if b.get("label"):
        return "(langfuse.label)"
    if config_label:
        return "(the provider's config.label)"
    if environment == SDK_DEFAULT_LABEL:
        return "(the environment's name, by default; what Langfuse's SDKs fetch unasked)"
    return (
        f"(the environment's name, by default; Langfuse's SDKs fetch {SDK_DEFAULT_LABEL!r} "
        "when no label is given: set langfuse.label or config.label to choose)"
    )


def template_of(version: Mapping[str, Any]) -> Any:
    """A version's prompt as one template: a chat prompt of one system message gives
    that message's text; anything else is returned as it is."""
    prompt = version.get("prompt")
    one = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else None
    if isinstance(one, Mapping) and one.get("role") == "system" and set(one) <= _MESSAGE_KEYS:
        return one.get("content")
    return prompt


_MESSAGE_KEYS = frozenset({"role", "content", "type"})


class LangfuseProvider(VendorProvider[Settings]):
    """Prompts in one Langfuse project; config: host, label, onDelete, timeoutSeconds,
    retries; credentials: publicKeyEnv, secretKeyEnv."""

    type_name: ClassVar[str] = "langfuse"
    replace_fields: ClassVar[Mapping[str, str]] = {
        "langfuse.promptName": "the label moves to another prompt, and the old prompt's label "
        "must be taken away",
        "langfuse.label": "another label stands for the environment, and the old one must be "
        "taken away",
        "langfuse.type": "a Langfuse prompt keeps its type (text or chat) for all its "
        "versions; the new type needs a new promptName",
    }
    #: A moved label is served at once (SDKs cache a prompt for 60 s).
    readiness_timeout: ClassVar[float] = 0.0
    poll_interval: ClassVar[float] = 2.0

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        return frozenset({"host", "timeoutSeconds", "retries", "label", "onDelete"})

    @classmethod
    def credential_keys(cls) -> frozenset[str]:
        return frozenset({"publicKeyEnv", "secretKeyEnv"})

    def read_settings(self, reader: ConfigReader) -> Settings:
        return read_settings(reader)

    def client_options(self) -> ClientOptions:
        s = self.settings
        what = "the Langfuse project's API keys (credentials.publicKeyEnv, secretKeyEnv)"
        public = secret_from_env(self._env, s.public_key_env, self.name, what)
        secret = secret_from_env(self._env, s.secret_key_env, self.name, what)
        return ClientOptions(
            base_url=s.host,
            deadline=s.timeout,
            retries=s.retries,
            headers={},
            auth=(public, secret),
            secrets=(secret,),
            auth_hint=f"check the keys in {s.public_key_env} and {s.secret_key_env}",
            server_message=server_message,
        )

    # -- plan time -----------------------------------------------------------------------

    def target(self, inst: Instance) -> Target:
        return target(inst.name, inst.environment, inst.spec, self.settings.label)

    def identity(self, inst: Instance) -> str | None:
        if inst.kind != "Deployment":
            return None
        t = self.target(inst)
        s = self.settings
        return f"{s.host} ({s.public_key_env}): prompt {t.prompt_name!r} label {t.label!r}"

    def validate(self, inst: Instance) -> list[str | Problem]:
        problems: list[str | Problem] = list(self.problems)
        if inst.kind != "Deployment":
            problems.append(
                Problem(f"provider {self.name!r} (langfuse) keeps prompts; it runs no schedules")
            )
            return problems
        problems.extend(unused_fields(inst, self.name, "langfuse", _UNUSED))
        if "prompt" not in inst.spec:
            problems.append(
                Problem(
                    f"provider {self.name!r} (langfuse) needs a `prompt` (name@version): its "
                    "template is what Langfuse keeps",
                    ("prompt",),
                )
            )
        t = self.target(inst)
        b = block(inst.spec)
        if problem := _name_problem(t.prompt_name):
            problems.append(
                Problem(f"langfuse prompt name {t.prompt_name!r}: {problem}", ("langfuse",))
            )
        if not LABEL_PATTERN.fullmatch(t.label) or t.label == LATEST:
            where = ("langfuse", "label") if b.get("label") else ("langfuse",)
            problems.append(
                Problem(f"langfuse label {t.label!r} is not valid: {LABEL_HINT}", where)
            )
        return problems

    @classmethod
    def delete_rule(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> DeleteRule:
        settings = read_settings(ConfigReader(config, cls.config_keys(), cls.credential_keys()))
        t = target(name, config.environment, body, settings.label)
        if settings.on_delete == "refuse":
            return DeleteRule(
                refused=f"Langfuse cannot take label {t.label!r} off prompt {t.prompt_name!r} "
                "(labels only move between versions): keep the deployment, or set "
                f"config.onDelete: delete-version on provider {config.name!r} to delete the "
                "version the label points at"
            )
        return DeleteRule(
            note=f"deletes the version of prompt {t.prompt_name!r} labelled {t.label!r} "
            "(Langfuse cannot take a label off a version); fails if another label points at it"
        )

    @classmethod
    def plan_note(
        cls, config: ProviderConfig, kind: str, name: str, body: Mapping[str, Any]
    ) -> str | None:
        if kind != "Deployment":
            return None
        label = config.config.get("label")
        settings_label = label if isinstance(label, str) and label else None
        t = target(name, config.environment, body, settings_label)
        return f"Langfuse prompt {t.prompt_name!r}, label {t.label!r} " + label_source(
            block(body), settings_label, config.environment
        )

    # -- the API ---------------------------------------------------------------------------

    def _get(self, prompt_name: str, **query: str | int) -> dict[str, Any] | None:
        """One version (by label or version), or None when there is none."""
        client = self.http()
        resp = client.request(
            "GET", f"{API}/{quote(prompt_name, safe='')}", params=query, ok=(200, 404)
        )
        return None if resp.status_code == 404 else client.json_object(resp)

    def _versions(self, prompt_name: str) -> list[int]:
        """Every version number of a prompt, newest first ([] when there is no prompt)."""
        client = self.http()
        found: set[int] = set()
        page = 1
        while True:
            resp = client.request(
                "GET", API, params={"name": prompt_name, "page": page, "limit": 100}
            )
            data = client.json_object(resp)
            for meta in data.get("data") or []:
                if isinstance(meta, Mapping) and meta.get("name") == prompt_name:
                    found.update(v for v in meta.get("versions") or [] if isinstance(v, int))
            pages = get_path(data, "meta.totalPages")
            if not isinstance(pages, int) or page >= pages or page >= 100:
                return sorted(found, reverse=True)
            page += 1

    def _label(self, t: Target, version: int) -> None:
        url = f"{API}/{quote(t.prompt_name, safe='')}/versions/{version}"
        self.http().request("PATCH", url, json={"newLabels": [t.label]})

    def _deploy(self, inst: Instance) -> str:
        """Put the label on a version with the desired content, making one only if none.

        Langfuse answers 409 when another version was made at the same moment (nothing
        was made): look again, since that one may be the content wanted."""
        t = self.target(inst)
        for _ in range(CONFLICT_ATTEMPTS):
            if self._find_and_label(t) or self._post(inst, t):
                return t.provider_id
        raise self.error(
            inst.key.address,
            f"Langfuse kept answering 409 (versions of prompt {t.prompt_name!r} made "
            f"concurrently) after {CONFLICT_ATTEMPTS} attempts; apply again",
        )

    def _find_and_label(self, t: Target) -> bool:
        """True when a version with `t`'s content exists and now carries the label."""
        current = self._get(t.prompt_name, label=t.label)
        if current is not None and t.matches(current):
            return True
        skip = current.get("version") if current is not None else None
        for version in self._versions(t.prompt_name):
            if version == skip:
                continue
            found = self._get(t.prompt_name, version=version)
            if found is not None and t.matches(found):
                self._label(t, version)
                return True
        return False

    def _post(self, inst: Instance, t: Target) -> bool:
        """Make a version with the label; False when Langfuse says to try again (409)."""
        ref = inst.spec.get("prompt") or {}
        message = (
            f"reconciler: {inst.environment}/{inst.key.address} "
            f"({ref.get('name')}@{ref.get('version')})"
        )[:COMMIT_MESSAGE_MAX]
        # Not retried when its answer is lost (it may have been made): a re-run finds it.
        resp = self.http().request(
            "POST",
            API,
            json={
                "name": t.prompt_name,
                "type": t.type,
                "prompt": t.prompt,
                "config": t.config,
                "labels": [t.label],
                "commitMessage": message,
            },
            ok=(200, 201, 409),
        )
        if resp.status_code == 409:
            self.sleep(self._random.uniform(0.1, 1.0))
            return False
        return True

    def _where(self, name: str, environment: str, ident: str | None) -> tuple[str, str]:
        """(prompt name, label) from the recorded id, else from the defaults."""
        parsed = parse_provider_id(ident) if ident else None
        return parsed or (name, self.settings.label or environment)

    # -- the contract ----------------------------------------------------------------------

    def read(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> LiveObject | None:
        prompt_name, label = self._where(name, environment, provider_id)
        found = self._get(prompt_name, label=label)
        return None if found is None else LiveObject(make_id(prompt_name, label), found)

    def status(
        self, kind: str, name: str, environment: str, provider_id: str | None
    ) -> HealthStatus:
        prompt_name, label = self._where(name, environment, provider_id)
        found = self._get(prompt_name, label=label)
        if found is None:
            return HealthStatus("Missing", f"no version of {prompt_name!r} has label {label!r}")
        return HealthStatus("Healthy", f"label {label!r} is on version {found.get('version')}")

    def create(self, inst: Instance) -> str:
        return self._deploy(inst)

    def update(self, inst: Instance, provider_id: str) -> None:
        want = self.target(inst).provider_id
        if provider_id != want:
            raise self.error(
                inst.key.address,
                f"recorded as prompt|label {provider_id!r}, but the manifests now say {want!r}; "
                "that is a replace, which `reconciler plan` shows: re-plan",
            )
        self._deploy(inst)

    def delete(self, kind: str, name: str, environment: str, provider_id: str | None) -> None:
        prompt_name, label = self._where(name, environment, provider_id)
        what = f"{kind.lower()}.{name}"
        if self.settings.on_delete == "refuse":
            raise self.error(
                what,
                f"Langfuse cannot take label {label!r} off prompt {prompt_name!r}; "
                "config.onDelete: delete-version deletes the version it points at",
            )
        current = self._get(prompt_name, label=label)
        if current is None:
            return
        version = current.get("version")
        others = sorted(set(current.get("labels") or []) - {label, LATEST})
        if others:
            raise self.error(
                what,
                f"version {version} of prompt {prompt_name!r} also carries label(s) "
                f"{', '.join(others)}: deleting it would take them away too; move them first",
            )
        self.http().request(
            "DELETE",
            f"{API}/{quote(prompt_name, safe='')}",
            params={"version": version},
            ok=(200, 204, 404),
        )

    def live_body(self, live: LiveObject, recorded: Mapping[str, Any]) -> dict[str, Any]:
        name = str(recorded.get("name", ""))
        t = target(name, str(recorded.get("environment", "")), recorded, self.settings.label)
        have: Mapping[str, Any] = live.body.get("config") or {}
        prompt = recorded.get("prompt")
        want_template = prompt.get("template") if isinstance(prompt, Mapping) else None
        fields: list[tuple[str, Any, Any]] = [
            ("prompt.template", want_template, template_of(live.body)),
            ("langfuse.type", t.type, live.body.get("type", "text")),
            ("model", recorded.get("model"), have.get("model")),
        ]
        options = recorded.get("options") or {}
        known = {"model"}
        for camel, snake in OPTION_NAMES.items():
            known.add(snake)
            fields.append((f"options.{camel}", options.get(camel), have.get(snake)))
        fields += [(f"langfuse.config.{k}", None, v) for k, v in have.items() if k not in known]
        return overlay(recorded, fields)


def server_message(resp: httpx.Response) -> str:
    """Langfuse answers errors as `{message, error}`: `error` is the error's class name,
    or a list of validation issues each with a `message`."""
    try:
        data = resp.json()
    except ValueError:
        return ""
    if not isinstance(data, Mapping):
        return ""
    parts = [str(data["message"])] if isinstance(data.get("message"), str) else []
    issues = data.get("error")
    if isinstance(issues, list):
        parts += [
            str(i["message"]) for i in issues[:3] if isinstance(i, Mapping) and "message" in i
        ]
    text = ": ".join(parts)
    return text if len(text) <= 300 else text[:299] + "…"


def _name_problem(name: str) -> str | None:
    """Langfuse's rules for prompt names (packages/shared/src/features/prompts)."""
    if not name.strip() or len(name) > NAME_MAX:
        return f"must be 1 to {NAME_MAX} characters"
    if "|" in name:
        return "cannot contain '|'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "folders are separated by single '/', not at either end"
    if name in RESERVED_NAMES:
        return f"{name!r} is reserved by Langfuse's UI"
    return None
