"""What the deployment tests share (imported by name: no package here): the pancreas
batches that become the three sites, and the FedscGen run they deploy."""

import json

from fedsc.methods.fedscgen import FedScGenConfig

SITES = ["celseq", "celseq2", "smartseq2"]

# small hidden layers: every claim holds at any size, and each exchange stays cheap
CONFIG = FedScGenConfig(rounds=1, local_epochs=1, num_threads=1, hidden=(128, 128))
SEED = 3


def fedscgen_params() -> str:
    """The deployed FedscGen run's ``params`` (JSON), the same run as ``simulation``."""
    return json.dumps(
        {"config": CONFIG.to_dict(), "seed": SEED, "batch_key": "batch", "label_key": "celltype"}
    )
