"""`git://REF`: state kept as commits on a ref of the manifests repo, so CI needs only git.

Three layers, each usable without the one above: `layout` (the tree's paths and JSON
documents), `refs` (one ref as a compare-and-swap file store: fetch, private index,
commit-tree, push with lease or update-ref) and `store` (the StateStore semantics: runs,
changes, serials, locks, the fingerprint key).
"""

from reconciler.state.git.refs import parse_git_url
from reconciler.state.git.store import GitState

__all__ = ["GitState", "parse_git_url"]
