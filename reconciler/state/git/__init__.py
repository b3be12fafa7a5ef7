"""`git://REF`: state kept as commits on a ref of the manifests repo, so CI needs only git.

Three layers, each usable without the one above: `layout` (the tree's paths and JSON
documents), `refs` (one ref as a compare-and-swap file store: fetch, private index,
commit-tree, push with lease or update-ref) and `backend` (the state Backend: reads,
transactions as mutations of a snapshot (`tx`), locks as files). The semantics are the
`Store`'s (state/store.py).
"""

from reconciler.state.git.backend import GitBackend
from reconciler.state.git.refs import parse_git_url

__all__ = ["GitBackend", "parse_git_url"]
