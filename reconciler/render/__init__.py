"""Plan renderers: human (terminal), JSON (machines), Markdown (pull-request comments)."""

from reconciler.render.human import render_human
from reconciler.render.json import render_json
from reconciler.render.markdown import render_markdown

__all__ = ["render_human", "render_json", "render_markdown"]
