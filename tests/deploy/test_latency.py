"""What makes a deployed exchange cheap (fast: no deployment): polling that backs off,
a message's arrays packed into one Flower Array, the trace that splits an exchange into
its legs, and a coordinator that is not held up by a stale node of a restarted site."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedsc.deploy import fleet, records, trace
from fedsc.deploy.polling import Backoff


def test_backoff_starts_fast_doubles_to_its_cap_and_restarts_on_activity(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("fedsc.deploy.polling._time.monotonic", lambda: now[0])
    b = Backoff(fast=0.01, cap=0.08, idle_after=5.0, idle_cap=0.5)
    assert [b.next_wait() for _ in range(5)] == [0.01, 0.02, 0.04, 0.08, 0.08]
    b.reset()
    assert b.next_wait() == 0.01
    now[0] += 6.0  # idle: waits grow past the active cap, up to the idle one
    assert [b.next_wait() for _ in range(7)] == [0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]
    b.reset()
    assert b.next_wait() == 0.01
    with pytest.raises(ValueError, match="fast <= cap"):
        Backoff(fast=0.2, cap=0.1)


def test_a_messages_arrays_travel_in_one_flower_array_bit_for_bit():
    arrays = {
        "w": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
        "nan": np.array([np.nan, -0.0, np.inf]),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "scalar": np.float64(2.5),
        "flags": np.array([True, False]),
        "sealed/0": np.frombuffer(b"\x00\xffab", dtype=np.uint8),
        "tensor": torch.arange(4, dtype=torch.float32),
    }
    record = records.content({"step": "x"}, arrays)
    (packed,) = record.array_records[records.ARRAYS].values()  # one object, not seven
    assert packed.numpy().dtype == np.uint8
    back = records.arrays_of(record)
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        want = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        assert back[key].dtype == want.dtype and back[key].shape == want.shape, key
        assert back[key].tobytes(order="A") == want.tobytes(order="A"), key
    assert records.arrays_of(records.content({"step": "x"})) == {}
    with pytest.raises(ValueError, match="allow_pickle"):
        records.content({}, {"objects": np.array([{"a": 1}], dtype=object)})


def test_the_message_log_holds_each_packed_array_by_name():
    """Tests that search what the coordinator received see the arrays, not the blob."""
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    log = fleet.MessageLog()
    log.add("site_a", "fedscgen/update", records.content({"bare": True}, {"value": value}))
    arrays = log.entries[0]["arrays"]
    assert list(arrays) == ["fedsc.arrays/value"]
    np.testing.assert_array_equal(arrays["fedsc.arrays/value"], value)


def test_trace_breakdown_splits_each_exchange_into_its_legs():
    """Two exchanges over two sites; each leg is the mean over the exchange's sites."""
    events = []
    starts = (0.0, 10.0)
    ends = ["node_received", "launch", "task_start", "handler_start", "handler_end", "node_sent"]
    for start in starts:
        events.append({"role": "coordinator", "name": "push", "nodes": [1, 2], "t": start})
        for node, site, scale in ((1, "a", 1.0), (2, "b", 3.0)):
            for i, name in enumerate(ends):
                events.append(
                    {
                        "role": "x",
                        "name": name,
                        "site": site,
                        "node": node,
                        "t": start + scale * (i + 1),
                    }
                )
            events[-1]["role"] = "supernode"  # a SuperNode's event maps its node to its site
            events.append(
                {"role": "coordinator", "name": "pulled", "node": node, "t": start + scale * 7}
            )
    out = trace.breakdown(sorted(events, key=lambda e: e["t"]))
    assert out["exchanges"] == 2
    # every leg lasts 1 s at site a and 3 s at site b: mean 2 s, twice
    assert all(v == pytest.approx(4.0) for v in out["legs"].values()), out["legs"]
    assert [len(legs) for _, legs in out["rows"]] == [7, 7]
    assert out["total"] == pytest.approx(10.0 + 21.0)


class _Grid:
    """A Flower Grid stand-in: nodes 1-4 online; the ``silent`` ones (e.g. a restarted
    site's old node) never answer."""

    def __init__(self, silent: tuple[int, ...] = (3,)) -> None:
        self.pending: dict[str, int] = {}
        self.silent = silent

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def push_messages(self, messages):
        ids = []
        for m in messages:
            ids.append(f"m{m.dst_node_id}")
            self.pending[ids[-1]] = m.dst_node_id
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in list(ids):
            node = self.pending[mid]
            if node in self.silent:
                continue
            info = {"site": f"site{node}", "n_obs": 1}
            out.append(
                SimpleNamespace(
                    metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=node),
                    has_error=lambda: False,
                    content=records.content({"public": info}),
                )
            )
        return out


def test_connect_takes_the_sites_that_answer_not_a_stale_node(monkeypatch):
    def message(content, dst_node_id, message_type):
        return SimpleNamespace(content=content, dst_node_id=dst_node_id)

    monkeypatch.setattr(fleet, "Message", message)
    f = fleet.Fleet(_Grid(), 3, timeout=30.0, poll=0.01)
    hello = f.connect({"method": "fedscgen"}, wait=1.0)
    assert sorted(hello) == ["site1", "site2", "site4"]
    assert f.nodes == {"site1": 1, "site2": 2, "site4": 4}
    assert len(f.log.entries) == 3
    g = fleet.Fleet(_Grid(silent=(3, 4)), 3, timeout=0.2, poll=0.01)  # three wanted, two answer
    with pytest.raises(fleet.DeploymentError, match="2 of 4 connected nodes answered"):
        g.connect({"method": "fedscgen"}, wait=1.0)
