"""Links to the forge for commits and pull requests, when the forge is known: from CI's
own variables (GitHub Actions, GitLab CI) or the approvals settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from reconciler.config import Settings

_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")


@dataclass(frozen=True)
class ForgeLinks:
    kind: Literal["github", "gitlab"]
    #: The project's web address, e.g. https://github.com/acme/manifests.
    project: str

    def commit(self, sha: str | None) -> str | None:
        if not sha or not _SHA.match(sha):
            return None
        middle = "/-/commit/" if self.kind == "gitlab" else "/commit/"
        return f"{self.project}{middle}{sha}"

    def pull_request(self, number: int | None) -> str | None:
        if number is None:
            return None
        middle = "/-/merge_requests/" if self.kind == "gitlab" else "/pull/"
        return f"{self.project}{middle}{int(number)}"

    def pr_label(self, number: int) -> str:
        return f"!{number}" if self.kind == "gitlab" else f"#{number}"


def forge_links(settings: Settings) -> ForgeLinks | None:
    """GitHub: GITHUB_SERVER_URL (default https://github.com) and GITHUB_REPOSITORY or
    approvals.repository. GitLab: CI_SERVER_URL (default https://gitlab.com) and
    CI_PROJECT_PATH or approvals.repository. None when neither is known."""
    env = settings.env
    source = settings.approvals.source
    configured = settings.approvals.repository
    if source == "gitlab" or (source != "github" and env.get("CI_PROJECT_PATH")):
        server = env.get("CI_SERVER_URL") or "https://gitlab.com"
        return _links("gitlab", server, env.get("CI_PROJECT_PATH") or configured)
    if source == "github" or env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        return _links("github", server, env.get("GITHUB_REPOSITORY") or configured)
    return None


def _links(kind: Literal["github", "gitlab"], server: str, path: str | None) -> ForgeLinks | None:
    url = urlsplit(server)
    if url.scheme not in ("http", "https") or not url.netloc or not path or not _PATH.match(path):
        return None
    return ForgeLinks(kind, f"{server.rstrip('/')}/{path}")
