"""reconciler: a GitOps reconciler for AI deployments."""

__version__ = "0.1.0"
