"""The first stage of every command: settings + a git ref → the desired state."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.config import CONFIG_FILE, ApprovalsConfig, Settings, parse_config
from reconciler.gitrepo import ManifestRepo
from reconciler.instances import secret_refs
from reconciler.manifests import Desired, Diagnostic, ManifestError, load_desired
from reconciler.providers import plan_time_problems
from reconciler.redaction import Register, to_backstop

_CONVENTIONAL_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class Loaded:
    desired: Desired
    #: The commit the manifests came from (HEAD for the working tree), if any.
    commit: str | None
    #: True when read from a working tree that differs from `commit`.
    dirty: bool
    ref: str | None
    #: Every repo path read: reconciler.yaml, the manifest paths, the templates.
    paths_read: tuple[str, ...] = ()
    #: The approval settings of the reconciler.yaml read with the manifests.
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    #: Every secret value the manifests refer to, in all environments
    #: (`desired_secrets`): the caller's redactor adds them (`Session.load`).
    secrets: frozenset[str] = frozenset()


def load(
    settings: Settings,
    ref: str | None = None,
    *,
    paths: Sequence[str] = (),
    repo: ManifestRepo | None = None,
    register: Register = to_backstop,
) -> Loaded:
    """Read the manifests at `ref` (git objects, no checkout) or in the working tree,
    and check them against the providers (`_check`).

    At a ref, the manifest paths are the ones that commit's reconciler.yaml names
    (unless `paths` are given): a commit is read as a whole, never mixed with the tree.
    `repo`: the session's (one per command, not one per load). `register` learns the
    secrets before the providers' checks, whose refusals may be rendered; without a
    session (library use) only the log backstop does.
    """
    loaded = _read(settings, ref, paths=paths, repo=repo)
    register(loaded.secrets)
    _check(loaded, settings, register=register)
    return loaded


def _read(
    settings: Settings,
    ref: str | None = None,
    *,
    paths: Sequence[str] = (),
    repo: ManifestRepo | None = None,
) -> Loaded:
    """The manifests at `ref` and the secret values they refer to (`Loaded.secrets`),
    not yet checked against the providers: a caller adds the secrets to its redactor
    first (`load`)."""
    if repo is None:
        repo = ManifestRepo(settings.repo)
    repo.followed = set()  # the symlinks this load follows, not an earlier load's
    config = parse_config(repo.read_file_at(ref, CONFIG_FILE)) if ref is not None else None
    approvals = config.approvals if config is not None else settings.approvals
    if not paths:
        paths = tuple(config.manifests) if config is not None else settings.manifest_paths
    files = repo.files_at(ref, paths)
    refused = [Diagnostic(path, 1, 1, why) for path, why in files.refused.items()]
    templates: list[str] = []

    def read_template(path: str) -> bytes | None:
        templates.append(path)
        return repo.read_file_at(ref, path)

    try:
        desired = load_desired(files, read_template)
    except ManifestError as e:
        raise ManifestError([*e.diagnostics, *refused]) from None
    if refused:
        raise ManifestError(refused)
    secrets = frozenset(desired_secrets(desired, settings.env).values())
    read_paths = (CONFIG_FILE, *paths, *sorted(set(templates) | repo.followed))
    if ref is not None:
        return Loaded(desired, repo.resolve(ref), False, ref, read_paths, approvals, secrets)
    commit = repo.head()
    dirty = commit is not None and repo.is_dirty(paths)
    return Loaded(desired, commit, dirty, None, read_paths, approvals, secrets)


def _check(loaded: Loaded, settings: Settings, *, register: Register = to_backstop) -> None:
    """What each provider finds wrong before anything is sent (`plan_time_problems`),
    raised as one ManifestError; the providers made for it tell `register` of what
    secrets they find."""
    desired = loaded.desired
    env = settings.env
    if problems := plan_time_problems(desired, repo_root=settings.repo, env=env, register=register):
        raise ManifestError(problems)


def referenced_names(desired: Desired) -> set[str]:
    """Every secret name the expanded instances and providers refer to, read from the
    documents (a deployment's `env` and its overrides', a schedule's `input`): far
    fewer values to walk than every expanded instance, so `validate` and `plan` stay
    fast. `tests/test_redact.py` checks it against walking the instances."""
    from reconciler.manifests.models import SecretRef

    names: set[str] = set()
    for d in desired.manifests.deployments.values():
        dspec = d.model.spec
        for env in (dspec.env, *(o.env or {} for o in dspec.overrides.values())):
            names.update(v.secret_env for v in env.values() if isinstance(v, SecretRef))
    for sched in desired.manifests.schedules.values():
        sspec = sched.model.spec
        for data in (sspec.input, *(o.input or {} for o in sspec.overrides.values())):
            names.update(secret_refs(data))
    for provs in desired.providers.values():
        for pc in provs.values():
            names.update(pc.credentials.values())
    return names


def desired_secrets(desired: Desired, env: Mapping[str, str]) -> dict[str, str]:
    """Every secret value the manifests refer to, in all environments, by name
    (`referenced_names`). A credential "name" that is not set and not written like a
    variable (`tokenEnv: hunter2`) may be the credential itself, typed in the wrong
    place: it is a secret too (named by itself)."""
    found = {name: env[name] for name in referenced_names(desired) if env.get(name)}
    for provs in desired.providers.values():
        for pc in provs.values():
            for name in pc.credentials.values():
                if name not in env and not _CONVENTIONAL_VAR.match(name):
                    found[name] = name
    return found


def provider_credential_names(settings: Settings, repo: ManifestRepo | None = None) -> set[str]:
    """The variables the working tree's Provider documents name as credentials, read
    best effort (only files that mention `Provider`; problems ignored): what loads no
    manifests still learns which values are credentials."""
    from reconciler.errors import ReconcilerError
    from reconciler.manifests.validate import parse_files, validate_documents

    try:
        files = (repo or ManifestRepo(settings.repo)).files_at(None, settings.manifest_paths)
    except ReconcilerError:
        return set()
    ignored: list[Diagnostic] = []
    mentioned = {path: data for path, data in files.items() if b"Provider" in data}
    docs = [d for d in parse_files(mentioned, ignored) if d[1].get("kind") == "Provider"]
    names: set[str] = set()
    for entry in validate_documents(docs, ignored).providers.values():
        spec = entry.model.spec
        names.update(spec.credentials.values())
        for override in spec.overrides.values():
            names.update((override.credentials or {}).values())
    return names
