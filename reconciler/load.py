"""The first stage of every command: settings + a git ref → the desired state."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.config import Settings
from reconciler.gitrepo import ManifestRepo
from reconciler.manifests import Desired, Diagnostic, ManifestError, load_desired
from reconciler.providers import plan_time_problems


@dataclass(frozen=True)
class Loaded:
    desired: Desired
    #: The commit the manifests came from (HEAD for the working tree), if any.
    commit: str | None
    #: True when read from a working tree that differs from `commit`.
    dirty: bool
    ref: str | None


def load(settings: Settings, ref: str | None = None) -> Loaded:
    """Read the manifests at `ref` (git objects, no checkout) or in the working tree."""
    repo = ManifestRepo(settings.repo)
    paths = settings.manifest_paths
    files = repo.files_at(ref, paths)
    refused = [Diagnostic(path, 1, 1, why) for path, why in files.refused.items()]
    try:
        desired = load_desired(files, lambda p: repo.read_file_at(ref, p))
    except ManifestError as e:
        raise ManifestError([*e.diagnostics, *refused]) from None
    if refused:
        raise ManifestError(refused)
    if problems := plan_time_problems(desired, repo_root=settings.repo, env=settings.env):
        raise ManifestError(problems)
    if ref is not None:
        return Loaded(desired, repo.resolve(ref), False, ref)
    commit = repo.head()
    dirty = commit is not None and repo.is_dirty(paths)
    return Loaded(desired, commit, dirty, None)
