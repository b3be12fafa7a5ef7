"""Settings: flags > environment variables > reconciler.yaml > built-in defaults."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError

from reconciler._strict import StrictModel
from reconciler.errors import ConfigError
from reconciler.manifests.diagnostics import from_validation_error
from reconciler.manifests.models import Text
from reconciler.manifests.yamlload import YamlProblem, YMap, load_documents
from reconciler.providers.local import REGISTRY_ENV, registry_problem
from reconciler.state import DEFAULT_STATE_URL

CONFIG_FILE = "reconciler.yaml"
APPROVALS_FILE_ENV = "RECONCILER_APPROVALS_FILE"
RUN_TIMEOUT_ENV = "RECONCILER_RUN_TIMEOUT"
DEFAULT_MANIFEST_PATHS = ("manifests",)


def _not_from_the_repo(path: str | None) -> str | None:
    if path is not None:
        raise ValueError(
            "the approvals file is never named in the repo (a change could point it at "
            "approvals it wrote): set RECONCILER_APPROVALS_FILE to a path outside the repo"
        )
    return path


class ApprovalsConfig(StrictModel):
    source: Literal["github", "gitlab", "file", "none"] = "none"
    repository: Text | None = None
    #: Refused when set (kept so the message can say where the path goes instead).
    file: Annotated[Text | None, AfterValidator(_not_from_the_repo)] = None


def _inside_repo(path: str) -> str:
    """A manifests path must stay inside the repo: relative, never climbing out."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"{path!r} is an absolute path: manifest paths are relative to the repo")
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"{path!r} leads outside the repo")
    return path


RepoPath = Annotated[Text, AfterValidator(_inside_repo)]


class ExecutionsConfig(StrictModel):
    """How much of each execution is kept (reconciler.yaml `executions`)."""

    #: Executions kept per environment; older finished ones are dropped.
    keep: int = Field(default=10_000, ge=1)
    #: Bytes of an input, a result or an error kept in state (and shown).
    max_result_bytes: int = Field(default=64 * 1024, ge=256)


class ConfigFile(StrictModel):
    """The schema of reconciler.yaml; every key is optional."""

    manifests: list[RepoPath] = Field(default_factory=lambda: list(DEFAULT_MANIFEST_PATHS))
    state: Text | None = None
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    parallelism: int = Field(default=8, ge=1, le=256)
    #: The run deadline of each apply, in seconds (none by default).
    run_timeout_seconds: float | None = Field(default=None, gt=0)
    executions: ExecutionsConfig = Field(default_factory=ExecutionsConfig)


@dataclass(frozen=True)
class Settings:
    repo: Path
    manifest_paths: tuple[str, ...]
    state_url: str
    approvals: ApprovalsConfig
    parallelism: int
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The `file` approval source's document: `--approvals-file` or
    #: RECONCILER_APPROVALS_FILE, never the repo (the change being judged writes it).
    approvals_file: Path | None = None
    #: Each apply run's deadline in seconds: `--run-timeout`, RECONCILER_RUN_TIMEOUT,
    #: reconciler.yaml's `runTimeoutSeconds`; None: no deadline.
    run_timeout: float | None = None
    #: Where `run_timeout` came from, for the message when it passes.
    run_timeout_source: str = ""
    #: reconciler.yaml's `executions` (RECONCILER_EXECUTIONS_KEEP overrides `keep`).
    executions: ExecutionsConfig = field(default_factory=ExecutionsConfig)


def _read_config_file(repo: Path) -> ConfigFile:
    path = repo / CONFIG_FILE
    if not path.is_file():
        return ConfigFile()
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(os.path.realpath(repo))):
        raise ConfigError(f"{CONFIG_FILE} is a symlink leading outside the repo (to {real})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_config(data)


def parse_config(data: bytes | None) -> ConfigFile:
    """reconciler.yaml's content (from disk or a git blob); None is the defaults."""
    if data is None:
        return ConfigFile()
    try:
        docs = [d.data for d in load_documents(data) if d.data is not None]
    except YamlProblem as p:
        raise ConfigError(f"{CONFIG_FILE}:{p.line}:{p.col}: {p.message}") from None
    if not docs:
        return ConfigFile()
    doc = docs[0]
    if not isinstance(doc, YMap):
        raise ConfigError(f"{CONFIG_FILE}:1:1: expected a mapping of settings")
    try:
        return ConfigFile.model_validate(doc)
    except ValidationError as e:
        diags = from_validation_error(e, doc, CONFIG_FILE, root=ConfigFile)
        raise ConfigError(
            f"{CONFIG_FILE} is invalid ({len(diags)} problem{'s' if len(diags) != 1 else ''})",
            details="\n".join(str(d) for d in diags),
        ) from None


def load_settings(
    repo: Path | str = ".",
    *,
    state_url: str | None = None,
    env: Mapping[str, str] | None = None,
    approvals_file: Path | str | None = None,
    local_registry: Path | str | None = None,
) -> Settings:
    env = dict(os.environ if env is None else env)
    if local_registry:  # the flag wins over the variable; providers read it from `env`
        env[REGISTRY_ENV] = str(Path(local_registry).absolute())
    if problem := registry_problem(env.get(REGISTRY_ENV)):
        raise ConfigError(problem)
    root = Path(repo).resolve()
    if not root.is_dir():
        raise ConfigError(f"manifests repo {str(repo)!r} is not a directory")
    cfg = _read_config_file(root)
    state = state_url or env.get("RECONCILER_STATE") or cfg.state or DEFAULT_STATE_URL
    run_timeout, run_timeout_source = _run_timeout(env.get(RUN_TIMEOUT_ENV), cfg)
    return Settings(
        repo=root,
        manifest_paths=tuple(cfg.manifests),
        state_url=state,
        approvals=cfg.approvals,
        parallelism=cfg.parallelism,
        env=env,
        approvals_file=_approvals_file(approvals_file or env.get(APPROVALS_FILE_ENV)),
        run_timeout=run_timeout,
        run_timeout_source=run_timeout_source,
        executions=_executions(env.get(EXECUTIONS_KEEP_ENV), cfg),
    )


def with_command_flags(
    settings: Settings, *, parallelism: int | None = None, run_timeout: float | None = None
) -> Settings:
    """A command's own flags over the settings: a flag wins over the environment and
    reconciler.yaml (resolved in `load_settings`), here and nowhere else."""
    if parallelism:
        settings = replace(settings, parallelism=parallelism)
    if run_timeout is not None:
        settings = replace(settings, run_timeout=run_timeout, run_timeout_source="--run-timeout")
    return settings


#: Overrides reconciler.yaml's `executions.keep`.
EXECUTIONS_KEEP_ENV = "RECONCILER_EXECUTIONS_KEEP"


def _executions(from_env: str | None, cfg: ConfigFile) -> ExecutionsConfig:
    if not from_env:
        return cfg.executions
    try:
        keep = int(from_env)
    except ValueError:
        keep = 0
    if keep < 1:
        raise ConfigError(f"{EXECUTIONS_KEEP_ENV} must be a whole number of at least 1")
    return cfg.executions.model_copy(update={"keep": keep})


def parse_run_timeout(text: str, source: str) -> float:
    """A run deadline in seconds: a positive number, else a clear error naming `source`."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{source} must be a positive number of seconds, got {text!r}")
    return value


def _run_timeout(from_env: str | None, cfg: ConfigFile) -> tuple[float | None, str]:
    if from_env:
        return parse_run_timeout(from_env, RUN_TIMEOUT_ENV), RUN_TIMEOUT_ENV
    if cfg.run_timeout_seconds is not None:
        return cfg.run_timeout_seconds, f"{CONFIG_FILE} runTimeoutSeconds"
    return None, ""


def _approvals_file(path: Path | str | None) -> Path | None:
    return Path(path).absolute() if path else None
