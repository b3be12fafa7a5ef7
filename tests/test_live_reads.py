"""Live reads (drift, status, overview) in a plain directory of manifests: no git, so
every run is applied from the working tree and its settings are the ones of record.
(A git repository's commit of record: test_cli_apply and test_agent.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import EXAMPLE, run_cli


def test_a_plain_directory_reads_its_instances_with_its_own_provider_settings(
    tmp_path: Path,
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "manifests")
    repo = ["--repo", str(tmp_path)]
    assert run_cli([*repo, "apply", "--env", "dev"]).code == 0
    drift = run_cli([*repo, "drift", "--env", "dev"])
    assert drift.code == 0 and "0 drifted" in drift.out, drift.out + drift.err
    r = run_cli([*repo, "overview", "--json"])
    assert r.code == 0, r.err
    dev = next(e for e in json.loads(r.out)["environments"] if e["name"] == "dev")
    assert dev["live"]["unreadable"] == 0, dev["live"]
    assert dev["live"]["in_sync"] == dev["instances"] > 0, dev
