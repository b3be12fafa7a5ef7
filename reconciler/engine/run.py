"""`reconciler run DEPLOYMENT --env ENV`: invoke what is recorded applied there, with the
provider settings of record, and record the execution."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.engine.context import register_recorded
from reconciler.engine.live import providers_of_record
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.instances import InstanceKey
from reconciler.runs.execute import Limits, execute
from reconciler.runs.model import Execution, Holder, new_id
from reconciler.runs.store import ExecutionStore, open_executions, reap
from reconciler.session import Session


@dataclass(frozen=True)
class RunReport:
    execution: Execution

    @property
    def exit_code(self) -> int:
        return 0 if self.execution.status == "completed" else 1


def parse_input(text: str | None, file: Path | None) -> dict[str, Any]:
    """The run's input: a JSON object from `--input` or `--input-file` (not both)."""
    if text is not None and file is not None:
        raise ConfigError("give --input or --input-file, not both")
    source = "--input"
    if file is not None:
        source = f"--input-file {file}"
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read {file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file} is not UTF-8 text") from None
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{source} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a JSON object, got {type(data).__name__}")
    return data


def limits(session: Session) -> Limits:
    return Limits(session.settings.executions.max_result_bytes, session.settings.executions.keep)


def open_execution_store(session: Session, *, read_only: bool = False) -> ExecutionStore:
    return open_executions(
        session.settings.state_url,
        repo_root=session.settings.repo,
        env=session.settings.env,
        read_only=read_only,
    )


def run(
    session: Session,
    deployment: str,
    environment: str,
    data: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> RunReport:
    key = InstanceKey(environment, "Deployment", deployment)
    with ExitStack() as stack:
        store = stack.enter_context(session.open_store(read_only=True))
        register_recorded(session, store)
        record = store.applied(environment, [key]).get(key)
        if record is None:
            raise ReconcilerError(
                f"deployment.{deployment} is not applied in {environment!r}: only what is "
                "recorded applied runs (reconciler apply first; reconciler status shows what is)"
            )
        if record.spec.get("suspended") is True:
            raise ReconcilerError(
                f"deployment.{deployment} is suspended in {environment!r}: it takes no runs "
                "(set suspended: false and apply to resume it)"
            )
        configs = providers_of_record(session, store).get(environment, {})
        config = configs.get(record.provider)
        if config is None:
            raise ReconcilerError(
                f"provider {record.provider!r} of deployment.{deployment} is not declared for "
                f"{environment!r} in the commit it was applied from"
            )
        provider = session.provider(config)
        stack.callback(provider.close)
        executions = session.open_executions()
        stack.callback(executions.close)
        reap(executions)
        at = now or datetime.now(UTC)
        ex = Execution(new_id(at), environment, deployment, "manual", "pending", at)
        ex.holder = Holder.me()
        done = execute(executions, ex, provider, record, data, limits=limits(session))
    return RunReport(done)
