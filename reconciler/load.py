"""The first stage of every command: settings + a git ref → the desired state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.config import CONFIG_FILE, ApprovalsConfig, Settings, parse_config
from reconciler.gitrepo import ManifestRepo
from reconciler.manifests import Desired, Diagnostic, ManifestError, load_desired
from reconciler.providers import plan_time_problems
from reconciler.redaction import register_desired


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


def load(
    settings: Settings,
    ref: str | None = None,
    *,
    paths: Sequence[str] = (),
    repo: ManifestRepo | None = None,
) -> Loaded:
    """Read the manifests at `ref` (git objects, no checkout) or in the working tree.

    At a ref, the manifest paths are the ones that commit's reconciler.yaml names
    (unless `paths` are given): a commit is read as a whole, never mixed with the tree.
    `repo`: the session's (one per command, not one per load).
    """
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

    def read(path: str) -> bytes | None:
        templates.append(path)
        return repo.read_file_at(ref, path)

    try:
        desired = load_desired(files, read)
    except ManifestError as e:
        raise ManifestError([*e.diagnostics, *refused]) from None
    if refused:
        raise ManifestError(refused)
    register_desired(desired, settings.env)
    if problems := plan_time_problems(desired, repo_root=settings.repo, env=settings.env):
        raise ManifestError(problems)
    read_paths = (CONFIG_FILE, *paths, *sorted(set(templates) | repo.followed))
    if ref is not None:
        return Loaded(desired, repo.resolve(ref), False, ref, read_paths, approvals)
    commit = repo.head()
    dirty = commit is not None and repo.is_dirty(paths)
    return Loaded(desired, commit, dirty, None, read_paths, approvals)


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
