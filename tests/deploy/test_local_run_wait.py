"""LocalDeployment.run waits for run.json, not for the run's log stream to end.

No deployment: the Control API calls (submit, status, log, stop) are replaced by fakes, so
this checks only the waiting (docs/deployment.md, "On one machine").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedsc.deploy.fleet import DeploymentError
from fedsc.deploy.local import LocalDeployment


def test_run_returns_on_the_record_and_reports_a_run_that_died_without_one(
    tmp_path: Path,
) -> None:
    dep = LocalDeployment({"a": tmp_path / "a.h5ad"}, tmp_path / "work")
    dep.workdir.mkdir()  # start() would make it (and the processes, not needed here)
    out = tmp_path / "coordinator"
    out.mkdir()
    stopped: list[int] = []
    dep._stop = stopped.append  # type: ignore[method-assign]
    dep.run_log = lambda run_id, chars=4000: "...Traceback: killed"  # type: ignore[method-assign]

    # a ServerApp that wrote its record: returned at once, though Flower still says running
    def submit_and_record(config_file: Path) -> int:
        (out / "run.json").write_text(json.dumps({"seconds": 1.0}))
        return 7

    dep._submit = submit_and_record  # type: ignore[method-assign]
    dep.run_status = lambda run_id: "running"  # type: ignore[method-assign]
    start = time.monotonic()
    assert dep.run({"params": "{}"}, out, timeout=60) == {"seconds": 1.0}
    assert time.monotonic() - start < 0.5

    # a ServerApp killed before it wrote run.json: reported once Flower says finished,
    # with the log's tail, not after the whole timeout
    dep._submit = lambda config_file: 8  # type: ignore[method-assign]
    dep.run_status = lambda run_id: "finished:failed (heartbeat expired)"  # type: ignore[method-assign]
    start = time.monotonic()
    with pytest.raises(DeploymentError, match=r"ended \(finished:failed.*killed") as failure:
        dep.run({"params": "{}"}, out, timeout=60)
    assert time.monotonic() - start < 3
    assert "run 8" in str(failure.value) and stopped == [8]
