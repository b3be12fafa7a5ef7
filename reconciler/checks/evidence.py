"""What a check's pass is evidence for: a digest of what answers a request (the rendered
prompt template and its version, the provider kind, the model, the options), never of
where it runs. Identical digests share evidence across environments; any change to one
of these is a new digest with no evidence yet."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.instances import Instance, canonical_json

if TYPE_CHECKING:
    from reconciler.manifests.models import EvalSpec


def evidence_document(spec: Mapping[str, Any], provider_type: str) -> dict[str, Any]:
    """The fields of a deployment's resolved spec the digest covers."""
    prompt = spec.get("prompt")
    return {
        "providerType": provider_type,
        "model": spec.get("model"),
        "prompt": dict(prompt) if isinstance(prompt, Mapping) else None,
        "options": spec.get("options"),
    }


def evidence_digest_of(spec: Mapping[str, Any], provider_type: str) -> str:
    doc = canonical_json(evidence_document(spec, provider_type))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


def evidence_digest(instance: Instance, provider_type: str) -> str:
    """The digest of one deployment instance, as its provider kind runs it."""
    return evidence_digest_of(instance.spec, provider_type)


def eval_document(spec: EvalSpec, dataset_digest: str) -> dict[str, Any]:
    """What an eval's evidence is bound to besides the deployment's digest: the cases it
    ran (the dataset, by content: inputs and expectations), how often, and the bar it
    was judged by. Not its budget or parallelism: a run stopped by its budget is no
    pass, and how fast it ran proves nothing."""
    return {
        "deployment": spec.deployment,
        "dataset": dataset_digest,
        "repeat": spec.repeat,
        "minPassRate": spec.min_pass_rate,
        "minSamples": spec.min_samples,
        **(
            {}
            if spec.baseline is None
            else {"baseline": spec.baseline.model_dump(mode="json", by_alias=True)}
        ),
        **(
            {}
            if spec.judge is None
            else {"judge": spec.judge.model_dump(mode="json", by_alias=True, exclude_defaults=True)}
        ),
    }


def eval_digest(document: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(dict(document)).encode()).hexdigest()
