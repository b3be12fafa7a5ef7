"""Pydantic models of the manifest kinds (apiVersion `reconciler/v1`).

Strict on purpose: unknown fields are errors (a typo must never be ignored), booleans
must be `true`/`false`, numbers must be numbers. String fields take the text the user
typed, even when YAML would read it as a number (`version: 1.10` stays "1.10").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    TypeAdapter,
    model_serializer,
    model_validator,
)

from reconciler._strict import StrictModel, typed_text
from reconciler.approvals.policy import ApprovalPolicy
from reconciler.schedules import parse_interval
from reconciler.vocabulary import Risk

API_VERSION = "reconciler/v1"
SLUG_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
ENDPOINT_PATTERN = r"^/[a-z0-9_/-]*$"
PROMPT_REF_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?@[0-9A-Za-z.+-]+$"
INTERVAL_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhd]$"
NOTIFY_URL_ENV_PATTERN = r"^RECONCILER_NOTIFY_[A-Z0-9_]+$"


Text = Annotated[str, BeforeValidator(typed_text)]


# Pattern-checked text: the constraint sits on `str` (not on Text) so pydantic-core
# checks it natively; on Text it would fall back to a slow Python check per value.
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN), BeforeValidator(typed_text)]
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR_PATTERN), BeforeValidator(typed_text)]
Semver = Annotated[str, StringConstraints(pattern=SEMVER_PATTERN), BeforeValidator(typed_text)]


class Metadata(StrictModel):
    name: Slug
    labels: dict[Text, Text] = Field(default_factory=dict)
    annotations: dict[Text, Text] = Field(default_factory=dict)


# --- Environment -------------------------------------------------------------------


class Window(StrictModel):
    """A deploy window: from each `allow`/`deny` cron start, for `duration`."""

    allow: Text | None = None
    deny: Text | None = None
    duration: Text
    timezone: Text = "UTC"

    @model_validator(mode="after")
    def _one_of(self) -> Window:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("a window needs exactly one of `allow` or `deny` (a cron start)")
        return self


def _positive_interval(text: str) -> str:
    if float(text[:-1]) <= 0:
        raise ValueError(f"interval {text!r} must be greater than 0")
    return text


#: `30s`, `5m`, `1h`, `1d`: how often the agent looks at an environment.
SyncInterval = Annotated[
    str,
    StringConstraints(pattern=INTERVAL_PATTERN),
    BeforeValidator(typed_text),
    AfterValidator(_positive_interval),
]


class SyncPolicy(StrictModel):
    """What `reconciler agent` does for the environment (nothing without this block)."""

    #: Apply new commits of the deploy branch (through the same gate as `apply`).
    auto: bool = False
    #: How often the deploy branch is fetched and the environment planned.
    interval: SyncInterval = "5m"
    #: Put drifted or missing instances back to their recorded spec (trigger `heal`).
    self_heal: bool = False
    #: How often live state is compared with the recorded state (default: `interval`).
    drift_interval: SyncInterval | None = None
    #: The static shard whose agents (`reconciler agent --shard NAME`) sync it.
    shard: Slug | None = None

    @model_serializer(mode="wrap")
    def _without_unset_shard(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Left out while unset, so policies recorded before it existed compare equal."""
        data = handler(self)
        if isinstance(data, dict) and self.shard is None:
            data.pop("shard", None)
        return data


#: What the agent tells a notification target about: its passes, and its re-checks
#: (`Check.spec.interval`): one that failed, and one that passed after a failure; and
#: what `reconciler eval` tells: a run that did not pass, and one that passed after.
NotifyEvent = Literal[
    "applied", "failed", "blocked", "drifted", "healed", "check_failed", "check_recovered",
    "eval_failed", "eval_recovered",
]  # fmt: skip
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "applied", "failed", "blocked", "drifted", "healed", "check_failed", "check_recovered",
    "eval_failed", "eval_recovered",
)  # fmt: skip
#: What a target hears when its `on` is not given. The check and eval events are not:
#: a recorded policy holds its targets' `on` spelled out, and a longer default would
#: make every environment's policy of record differ from its commit's (a policy change
#: to approve on upgrade). A target names them to hear of re-checks.
DEFAULT_NOTIFY_EVENTS: tuple[NotifyEvent, ...] = NOTIFY_EVENTS[:5]
NotifyUrlEnv = Annotated[
    str, StringConstraints(pattern=NOTIFY_URL_ENV_PATTERN), BeforeValidator(typed_text)
]


class NotifyTarget(StrictModel):
    """A notification target: the *name* of an environment variable of the agent that
    holds an apprise URL. The URL (a secret: it carries tokens) never sits in git, and a
    change can only choose among the targets the operator provided (RECONCILER_NOTIFY_*)."""

    url_env: NotifyUrlEnv
    on: list[NotifyEvent] = Field(default_factory=lambda: list(DEFAULT_NOTIFY_EVENTS), min_length=1)


class PromotionRequires(StrictModel):
    #: Each changed deployment's exact digest has a passing check in `from`.
    checks: bool = True
    #: Evals (by name, each run in `from`) whose latest run on each changed deployment's
    #: exact digest passed there, judged by the Eval of record: its dataset, cases and
    #: thresholds are then part of this environment's policy.
    evals: list[Slug] = Field(default_factory=list)


class Promotion(StrictModel):
    """Where this environment's deployments come from: a change reaches it only with
    what `from` has applied, verified there and soaked (docs/design.md, "Verified
    promotion"). Part of the policy: changing it is judged by the policy of record."""

    source: Slug = Field(alias="from")
    requires: PromotionRequires = Field(default_factory=PromotionRequires)
    #: How long `from` has run the exact digest, with no failed check since (e.g. 2h).
    soak: SyncInterval | None = None


class EnvironmentSpec(StrictModel):
    description: Text | None = None
    protected: bool = False
    approvals: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    windows: list[Window] = Field(default_factory=list)
    allow_override: bool = False
    #: `reconciler agent`: sync, drift and self-heal (see docs/agent.md).
    sync: SyncPolicy | None = None
    #: Where the agent sends notices about this environment.
    notify: list[NotifyTarget] = Field(default_factory=list)
    #: The environment variables this environment's manifests may read (`secretEnv`
    #: references, provider credentials). Unset: whatever they name, each still part of
    #: the policy (docs/design.md, "The gate").
    secrets: list[EnvVarName] | None = None
    #: Verified promotion from another environment (see `Promotion`).
    promotion: Promotion | None = None

    @model_serializer(mode="wrap")
    def _without_unset_agent_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        """`sync` and `notify` are left out while unset, so a policy recorded before they
        existed reads the same as today's (else every environment's policy would look
        changed on upgrade, and its next change would be judged as critical)."""
        data = handler(self)
        if isinstance(data, dict):
            if self.sync is None:
                data.pop("sync", None)
            if not self.notify:
                data.pop("notify", None)
            if self.secrets is None:
                data.pop("secrets", None)
            if self.promotion is None:
                data.pop("promotion", None)
        return data


class Environment(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Environment"]
    metadata: Metadata
    spec: EnvironmentSpec = Field(default_factory=EnvironmentSpec)


# --- Provider ----------------------------------------------------------------------


class ProviderOverride(StrictModel):
    config: dict[Text, JsonValue] | None = None
    credentials: dict[Text, EnvVarName] | None = None
    models: list[Text] | None = None


class ProviderSpec(StrictModel):
    type: Slug
    environments: list[Slug] = Field(min_length=1)
    config: dict[Text, JsonValue] = Field(default_factory=dict)
    credentials: dict[Text, EnvVarName] = Field(default_factory=dict)
    models: list[Text] | None = None
    overrides: dict[Slug, ProviderOverride] = Field(default_factory=dict)


class Provider(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Provider"]
    metadata: Metadata
    spec: ProviderSpec


# --- Prompt ------------------------------------------------------------------------


class PromptVersion(StrictModel):
    version: Semver
    template: Text | None = None
    template_file: Text | None = None
    description: Text | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptVersion:
        if (self.template is None) == (self.template_file is None):
            raise ValueError("a prompt version needs exactly one of `template` or `templateFile`")
        return self


class PromptSpec(StrictModel):
    description: Text | None = None
    versions: list[PromptVersion] = Field(min_length=1)


class Prompt(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Prompt"]
    metadata: Metadata
    spec: PromptSpec


# --- Deployment --------------------------------------------------------------------


class Options(StrictModel):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: list[Text] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None


class Scaling(StrictModel):
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 1
    hardware: Text | None = None
    # minReplicas <= maxReplicas is checked after overrides are merged (expand.py).


class Pricing(StrictModel):
    """What a deployment's tokens cost, for `reconciler run` and `metrics`: a cost is
    shown only where a price is declared (unknown, never 0)."""

    input_per_million_tokens: Annotated[float, Field(ge=0)]
    output_per_million_tokens: Annotated[float, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"


class SecretRef(StrictModel):
    secret_env: EnvVarName


def _env_value_kind(value: Any) -> str:
    return "secretRef" if isinstance(value, dict | SecretRef) else "text"


#: An env value: plain text, or `{secretEnv: NAME}` (the tags never reach messages).
EnvValue = Annotated[
    Annotated[Text, Tag("text")] | Annotated[SecretRef, Tag("secretRef")],
    Discriminator(_env_value_kind),
]
UNION_TAGS = frozenset({"text", "secretRef"})
Endpoint = Annotated[str, StringConstraints(pattern=ENDPOINT_PATTERN), BeforeValidator(typed_text)]
PromptRef = Annotated[
    str, StringConstraints(pattern=PROMPT_REF_PATTERN), BeforeValidator(typed_text)
]
Interval = Annotated[str, StringConstraints(pattern=INTERVAL_PATTERN), BeforeValidator(typed_text)]
Timeout = Annotated[float, Field(gt=0)]


# Provider-specific deployment settings: one block per provider type. A block for a
# type other than the deployment's provider's is an error (expand.py); each provider
# checks the values' shapes at plan time (`Provider.validate`).


class AzureSku(StrictModel):
    """An Azure OpenAI deployment's SKU, named as ARM (`sku`) and Terraform's
    azurerm_cognitive_deployment (`sku { name, capacity }`) name it."""

    name: Text = Field(
        description="The SKU (deployment type): Standard, GlobalStandard, DataZoneStandard, "
        "ProvisionedManaged, ..."
    )
    capacity: Annotated[int, Field(ge=1)] = Field(
        1,
        description="Thousands of tokens per minute for a standard SKU (100 is 100k TPM), "
        "PTUs for a provisioned one.",
    )


class AzureSettings(StrictModel):
    """Only for a provider of type `azure-openai` (an Azure OpenAI deployment in
    Azure Resource Manager). `model` is the model name, `sku` its SKU name and
    capacity (`scaling.hardware` and `scaling.maxReplicas` are still read for them,
    deprecated)."""

    sku: AzureSku | None = Field(
        None, description="The SKU: {name: GlobalStandard, capacity: 100} is 100k TPM."
    )

    deployment_name: Text | None = Field(
        None,
        description="The Azure deployment's name in its account (default: the deployment's name).",
    )
    model_version: Text | None = Field(
        None, description='The model version, e.g. "2024-08-06"; left out, Azure picks its default.'
    )
    model_format: Text | None = Field(None, description='The model format (default "OpenAI").')
    version_upgrade_option: (
        Literal["OnceNewDefaultVersionAvailable", "OnceCurrentVersionExpired", "NoAutoUpgrade"]
        | None
    ) = Field(None, description="When Azure may move the deployment to a newer model version.")
    rai_policy_name: Text | None = Field(
        None, description='The content filter (RAI policy), e.g. "Microsoft.DefaultV2".'
    )


class HuggingFaceImage(StrictModel):
    """An Inference Endpoint's `model.image`: one of the engines Hugging Face runs, or
    a container of your own (`custom`, with its URL, port and health route)."""

    engine: Literal["huggingface", "tgi", "tei", "vllm", "sglang", "llamacpp", "custom"] = Field(
        description="huggingface (the default toolkit), tgi, tei, vllm, sglang, llamacpp or custom."
    )
    url: Text | None = Field(
        None, description="The container image, e.g. ghcr.io/acme/server:1.2 (custom: required)."
    )
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None, description="The port the container listens on (custom)."
    )
    health_route: Text | None = Field(
        None, description='The path that answers 200 when ready, e.g. "/health" (custom).'
    )


class HuggingFaceRoute(StrictModel):
    domain: Text | None = Field(None, description="A custom domain for the endpoint.")
    path: Text | None = Field(None, description='A path prefix, e.g. "/v1".')


class HuggingFaceAutoscaling(StrictModel):
    metric: Literal["pendingRequests", "hardwareUsage"] = Field(
        description="pendingRequests (per replica, over 20 s) or hardwareUsage (percent)."
    )
    threshold: Annotated[float, Field(gt=0)] = Field(
        description="Scale up above this: e.g. 1.5 pending requests, or 80 (%)."
    )


class HuggingFaceSettings(StrictModel):
    """Only for a provider of type `huggingface` (a Hugging Face Inference Endpoint).
    `model` is the Hub repository unless `repository` is set, `scaling.hardware` the
    instance type (nvidia-a10g, intel-icl, ...), `scaling.minReplicas`/`maxReplicas`
    the replica bounds, `env` the container's variables (secret references become
    endpoint secrets), `enabled: false` a paused endpoint."""

    endpoint_name: Text | None = Field(
        None, description="The endpoint's name in its namespace (default: the deployment's name)."
    )
    repository: Text | None = Field(
        None, description='The Hub model repository, e.g. "meta-llama/Llama-3.1-8B-Instruct".'
    )
    revision: Text | None = Field(
        None, description="A commit sha, branch or tag of the repository."
    )
    task: Text | None = Field(None, description='e.g. "text-generation", "sentence-embeddings".')
    framework: Text | None = Field(None, description='e.g. "pytorch" (default) or "custom".')
    instance_size: Text | None = Field(None, description='e.g. "x1" (default), "x4".')
    vendor: Text | None = Field(
        None,
        description='The cloud vendor, e.g. "aws" (default: the provider\'s config.vendor, '
        "else aws).",
    )
    region: Text | None = Field(
        None,
        description="The vendor's region (default: the provider's config.region, else us-east-1).",
    )
    type: Literal["public", "authenticated", "private"] | None = Field(
        None,
        description="Who may call the endpoint (default: the provider's config.type, "
        "else authenticated).",
    )
    scale_to_zero_timeout: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Minutes without requests before scaling to zero "
        "(needs scaling.minReplicas: 0).",
    )
    image: HuggingFaceImage | None = Field(
        None,
        description="The serving engine or a custom container (left out: the endpoint keeps "
        "the one it has; a new one gets Hugging Face's default).",
    )
    route: HuggingFaceRoute | None = Field(
        None, description="A custom domain and path for the endpoint (left out: not changed)."
    )
    autoscaling: HuggingFaceAutoscaling | None = Field(
        None,
        description="What scales the replicas (left out: not changed; Hugging Face's "
        "default is pendingRequests 1.5).",
    )


class LangfuseSettings(StrictModel):
    """Only for a provider of type `langfuse` (a prompt in Langfuse prompt management).
    The resolved prompt template is the prompt text, `model` and `options` its config,
    and the environment a label on the version with that content."""

    prompt_name: Text | None = Field(
        None,
        description='The Langfuse prompt\'s name, folders with "/" '
        "(default: the deployment's name).",
    )
    label: Text | None = Field(
        None,
        description="The label that stands for this environment (default: the provider's "
        "config.label, else the environment's name).",
    )
    type: Literal["text", "chat"] | None = Field(
        None, description="`text` (default) or `chat` (the template becomes one system message)."
    )


class ReplicateSettings(StrictModel):
    """Only for a provider of type `replicate` (a Replicate deployment). `model` is the
    Replicate model (`owner/name`), `scaling.hardware` the hardware SKU (gpu-t4, cpu,
    ...), `scaling.minReplicas`/`maxReplicas` the instance bounds, `enabled: false` a
    deployment at 0 instances."""

    deployment_name: Text | None = Field(
        None,
        description="The deployment's name under the provider's config.owner "
        "(default: the deployment's name).",
    )
    version: Text | None = Field(
        None, description="The model version to run: its 64-character id (required)."
    )


class TogetherSettings(StrictModel):
    """Only for a provider of type `together` (a Together AI dedicated endpoint).
    `model` is the model to serve, `scaling.hardware` the hardware id
    (2x_nvidia_h100_80gb_sxm, ...), `scaling.minReplicas`/`maxReplicas` the autoscaling
    bounds, `enabled: false` a stopped endpoint."""

    inactive_timeout: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="Minutes without requests before Together stops the endpoint "
        "(0 turns it off; left out, the endpoint's setting is kept).",
    )
    availability_zone: Text | None = Field(
        None, description="Where the endpoint runs (set at creation only)."
    )
    disable_speculative_decoding: bool | None = Field(
        None, description="Turn speculative decoding off (set at creation only)."
    )


class PredibaseSettings(StrictModel):
    """Only for a provider of type `predibase` (a private Predibase deployment serving
    LoRA adapters with LoRAX). `model` is the base model, `scaling.hardware` the
    accelerator (fixed at creation), `scaling.minReplicas`/`maxReplicas` the replica
    bounds; a field left out is left as Predibase has it."""

    deployment_name: Text | None = Field(
        None, description="The Predibase deployment's name (default: the deployment's name)."
    )
    cooldown_seconds: Annotated[int, Field(ge=600)] | None = Field(
        None, description="Idle seconds before replicas scale down (Predibase: cooldownTime)."
    )
    scale_up_threshold: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Queued requests per replica before another is started."
    )
    quantization: Literal["none", "fp8", "bitsandbytes-nf4"] | None = Field(
        None, description="Fixed at creation; left out, Predibase picks by model and accelerator."
    )
    max_total_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="The most tokens (prompt and completion) one request may use."
    )
    adapters: list[Text] | None = Field(
        None,
        description='Adapters loaded when a replica starts, as "repo/version" '
        "(Predibase: preloadedAdapters); any other adapter is still served per request.",
    )


class ModalSettings(StrictModel):
    """Only for a provider of type `modal` (a function `modal deploy` deployed; reconciler
    manages its autoscaler, not its code). `scaling.minReplicas`/`maxReplicas` are the
    function's min and max containers; a field left out is left as Modal has it."""

    app: Text | None = Field(None, description="The deployed Modal app's name (required).")
    function: Text | None = Field(None, description="The function's name in that app (required).")
    environment: Text | None = Field(
        None,
        description="The Modal environment (default: the provider's config.environment, "
        "else the workspace's default).",
    )
    buffer_containers: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Extra idle containers kept warm beyond current demand."
    )
    scaledown_window: Annotated[int, Field(ge=2, le=3600)] | None = Field(
        None, description="Seconds an idle container waits before it scales down (2 to 3600)."
    )


#: Deployment block key → the provider type that reads it.
PROVIDER_BLOCKS: dict[str, str] = {
    "azure": "azure-openai",
    "huggingface": "huggingface",
    "langfuse": "langfuse",
    "replicate": "replicate",
    "together": "together",
    "predibase": "predibase",
    "modal": "modal",
}


class DeploymentFields(StrictModel):
    """Fields a deployment override may set (all optional)."""

    provider: Slug | None = None
    model: Text | None = None
    prompt: PromptRef | None = None
    options: Options | None = None
    endpoint: Endpoint | None = None
    scaling: Scaling | None = None
    env: dict[EnvVarName, EnvValue] | None = None
    timeout_seconds: Timeout | None = None
    readiness_timeout_seconds: Timeout | None = None
    enabled: bool | None = None
    risk: Risk | None = None
    pricing: Pricing | None = None
    suspended: bool | None = None
    azure: AzureSettings | None = None
    huggingface: HuggingFaceSettings | None = None
    langfuse: LangfuseSettings | None = None
    replicate: ReplicateSettings | None = None
    together: TogetherSettings | None = None
    predibase: PredibaseSettings | None = None
    modal: ModalSettings | None = None


class DeploymentSpec(StrictModel):
    environments: list[Slug] = Field(min_length=1)
    provider: Slug
    model: Text
    prompt: PromptRef | None = None
    options: Options | None = None
    endpoint: Endpoint | None = None
    scaling: Scaling | None = None
    env: dict[EnvVarName, EnvValue] = Field(default_factory=dict)
    timeout_seconds: Timeout | None = None
    #: How long apply waits for this deployment to become Healthy after a change
    #: (default: its provider's readiness timeout).
    readiness_timeout_seconds: Timeout | None = None
    enabled: bool = True
    risk: Risk = "low"
    pricing: Pricing | None = None
    #: Stopped where the vendor can (local: a flag; http: the API's own); refused at
    #: validate on a provider that cannot. Its schedules record `skipped`.
    suspended: bool | None = None
    azure: AzureSettings | None = None
    huggingface: HuggingFaceSettings | None = None
    langfuse: LangfuseSettings | None = None
    replicate: ReplicateSettings | None = None
    together: TogetherSettings | None = None
    predibase: PredibaseSettings | None = None
    modal: ModalSettings | None = None
    overrides: dict[Slug, DeploymentFields] = Field(default_factory=dict)


class Deployment(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Deployment"]
    metadata: Metadata
    spec: DeploymentSpec


# --- Schedule ----------------------------------------------------------------------


class ScheduleFields(StrictModel):
    cron: Text | None = None
    interval: Interval | None = None
    timezone: Text | None = None
    input: dict[Text, JsonValue] | None = None
    enabled: bool | None = None
    start_at: Text | None = None
    end_at: Text | None = None
    concurrency: Literal["allow", "forbid", "replace"] | None = None
    starting_deadline_seconds: Annotated[int, Field(ge=1)] | None = None


class ScheduleSpec(StrictModel):
    environments: list[Slug] = Field(min_length=1)
    deployment: Slug
    cron: Text | None = None
    interval: Interval | None = None
    timezone: Text = "UTC"
    input: dict[Text, JsonValue] = Field(default_factory=dict)
    enabled: bool = True
    start_at: Text | None = None
    end_at: Text | None = None
    concurrency: Literal["allow", "forbid", "replace"] = "allow"
    #: A fire that could not start within this many seconds of its time is recorded
    #: `missed` instead of run late (Kubernetes CronJob's startingDeadlineSeconds).
    starting_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    overrides: dict[Slug, ScheduleFields] = Field(default_factory=dict)


class Schedule(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Schedule"]
    metadata: Metadata
    spec: ScheduleSpec


# --- Check -------------------------------------------------------------------------


def _valid_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema that is itself invalid is refused where it is written, not at the first
    answer. (jsonschema is imported here only: most manifests never need it.)"""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"not a valid JSON Schema: {e.message}") from None
    return schema


class NumberExpect(StrictModel):
    """A numeric answer's bounds: `equals` within `tolerance`, and/or `min` / `max`."""

    equals: float | None = None
    tolerance: Annotated[float, Field(ge=0)] = 0.0
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> NumberExpect:
        if self.equals is None and self.min is None and self.max is None:
            raise ValueError("a number expectation needs `equals`, `min` or `max`")
        return self


class CheckExpect(StrictModel):
    """What one request of a check must answer; every field set must hold."""

    #: The call completed (false: it must fail, e.g. a guard refusing bad input).
    succeeded: bool = True
    contains: list[Text] = Field(default_factory=list)
    not_contains: list[Text] = Field(default_factory=list)
    #: A Python regular expression the answer must match (searched, not anchored).
    regex: Text | None = None
    #: The whole answer, exactly.
    equals: Text | None = None
    latency_ms_max: Annotated[float, Field(gt=0)] | None = None
    #: In the deployment's `pricing` currency; without a price the cost is unknown and
    #: the expectation fails (never assumed 0).
    cost_max: Annotated[float, Field(ge=0)] | None = None
    #: The answer is JSON valid against this JSON Schema (its own `$schema`, else
    #: draft 2020-12).
    json_schema: Annotated[dict[Text, JsonValue], AfterValidator(_valid_json_schema)] | None = None
    #: The answer is a number (the whole answer, trimmed) within these bounds.
    number: NumberExpect | None = None
    #: Eval cases only: the criteria the Eval's `judge` deployment grades the answer by.
    judge: Text | None = None


class CheckRequest(StrictModel):
    input: dict[Text, JsonValue] = Field(default_factory=dict)
    expect: CheckExpect = Field(default_factory=CheckExpect)


def _check_interval(text: str) -> str:
    parse_interval(text)  # at least 1m: a re-check must not hammer a provider
    return text


#: How often the agent runs a check again on what is applied (`15m`, `1h`; at least 1m).
CheckInterval = Annotated[
    str,
    StringConstraints(pattern=INTERVAL_PATTERN),
    BeforeValidator(typed_text),
    AfterValidator(_check_interval),
]


class CheckSpec(StrictModel):
    """A few requests through the run path after every apply that changes `deployment`
    in one of `environments`: a failure fails the run; `rollback` also restores what
    the run changed. With `interval`, the agent also runs them again on what is applied,
    every `interval` after the deployment was applied (a failure there revokes its
    verified status and notifies `check_failed`)."""

    deployment: Slug
    environments: list[Slug] = Field(min_length=1)
    requests: list[CheckRequest] = Field(min_length=1, max_length=10)
    on_fail: Literal["fail", "rollback"] = "fail"
    interval: CheckInterval | None = None


class Check(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Check"]
    metadata: Metadata
    spec: CheckSpec


# --- Eval --------------------------------------------------------------------------


class EvalBaseline(StrictModel):
    """A bar relative to what `environment` runs now: the pass rate may fall at most
    `maxDrop` below the latest run of this eval on the digest applied there."""

    environment: Slug
    max_drop: Annotated[float, Field(ge=0, le=1)] = 0.0


class EvalJudge(StrictModel):
    """A deployment that grades answers (an LLM as judge), pinned to the evidence digest
    it must run, so a changed judge is a changed eval. It is called with `question`
    (the case's input as JSON), `answer` and `criteria`, and its answer must meet
    `pass`."""

    deployment: Slug
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
    pass_: CheckExpect = Field(alias="pass")


class EvalSpec(StrictModel):
    """A dataset-based quality run of one deployment as applied in an environment
    (`reconciler eval`): each JSONL case of `dataset` ({"input": {...}, "expect": {...}},
    the expectations of a Check) sent `repeat` times."""

    deployment: Slug
    environments: list[Slug] = Field(min_length=1)
    #: Repo-relative JSONL file, read as a git blob at the commit loaded.
    dataset: Text
    repeat: Annotated[int, Field(ge=1, le=20)] = 1
    min_pass_rate: Annotated[float, Field(ge=0, le=1)] = 1.0
    #: Fewer judged calls than this (failed calls count as judged) is `inconclusive`.
    min_samples: Annotated[int, Field(ge=1)] = 1
    #: The budget: the run stops, outcome `stopped`, before a call past this many, once
    #: the calls ended cost this much (the deployment's `pricing` currency; it must
    #: declare one), or once this many seconds have passed. Calls under way end.
    max_calls: Annotated[int, Field(ge=1)] | None = None
    max_cost: Annotated[float, Field(gt=0)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None
    #: Calls under way at once.
    parallelism: Annotated[int, Field(ge=1, le=64)] = 4
    baseline: EvalBaseline | None = None
    judge: EvalJudge | None = None


class Eval(StrictModel):
    api_version: Literal["reconciler/v1"]
    kind: Literal["Eval"]
    metadata: Metadata
    spec: EvalSpec


Manifest = Annotated[
    Environment | Provider | Prompt | Deployment | Schedule | Check | Eval,
    Field(discriminator="kind"),
]
KINDS: dict[str, type[StrictModel]] = {
    "Environment": Environment,
    "Provider": Provider,
    "Prompt": Prompt,
    "Deployment": Deployment,
    "Schedule": Schedule,
    "Check": Check,
    "Eval": Eval,
}
#: Per kind, the model an environment override is validated with.
OVERRIDE_MODELS: dict[str, type[StrictModel]] = {
    "Provider": ProviderOverride,
    "Deployment": DeploymentFields,
    "Schedule": ScheduleFields,
}
FULL_SPECS: dict[str, type[StrictModel]] = {
    "Provider": ProviderSpec,
    "Deployment": DeploymentSpec,
    "Schedule": ScheduleSpec,
}
manifest_adapter: TypeAdapter[Any] = TypeAdapter(Manifest)
