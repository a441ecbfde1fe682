"""``smpc.prestart``: a backend's slow start-up begins early, only where it will be used."""

from __future__ import annotations

import pytest
from _helpers.processes import parent

import smpc
from smpc import party_pool


@pytest.fixture
def fork_server_starts(monkeypatch):
    calls: list[None] = []
    monkeypatch.setattr(party_pool, "start_fork_server", lambda: calls.append(None))
    return calls


@pytest.mark.parametrize(
    ("name", "options", "starts"),
    [
        ("crypten", {}, True),
        ("crypten", {"parties": 3, "transport": "pipe"}, True),
        ("crypten", {"transport": "threads"}, False),  # no processes
        ("crypten", {"party_addresses": [("127.0.0.1", 1)]}, False),  # remote parties
        ("crypten", {"start_method": "spawn"}, False),  # no fork server
        ("plaintext", {}, False),
        ("no-such-backend", {}, False),  # make_aggregator reports unknown names
    ],
)
def test_prestart_starts_the_fork_server_only_for_local_forkserver_parties(
    fork_server_starts, name, options, starts
):
    smpc.prestart(name, **options)
    assert len(fork_server_starts) == int(starts)


def test_a_started_fork_server_serves_the_parties():
    """The server prestart starts is the one the parties are forked from (no second one)."""
    import multiprocessing.forkserver as forkserver

    from smpc.crypten_backend import CryptenAggregator

    smpc.prestart("crypten")
    server = forkserver._forkserver._forkserver_pid
    assert server is not None
    smpc.prestart("crypten")  # idempotent
    assert forkserver._forkserver._forkserver_pid == server
    with CryptenAggregator(transport="pipe") as agg:
        assert agg.weighted_mean([[1.0, 2.0], [3.0, 4.0]], [1.0, 3.0]).tolist() == [2.5, 3.5]
        assert forkserver._forkserver._forkserver_pid == server
        assert {parent(pid) for pid in agg.pids} == {server}  # forked from it


def test_smpc_and_fedsc_settings_load_without_torch():
    """`import smpc`, its backend names, prestart and cpus, and fedsc.settings skip torch."""
    import subprocess
    import sys

    probe = (
        "import sys, smpc, smpc.cpus, fedsc.settings\n"
        "names = list(smpc.BACKENDS), smpc.prestart, smpc.cpus.available_cpus()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert all(getattr(smpc, n) is not None for n in smpc.__all__)  # lazily, all resolve\n"
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
