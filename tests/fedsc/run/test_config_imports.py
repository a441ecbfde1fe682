"""The run configuration is light: building one imports no torch, Flower or CrypTen."""

from __future__ import annotations

import subprocess
import sys

import fedsc.run_config
import fedsc.runner
from fedsc.run import config, execute, load, record

BUILD = """
import sys
from fedsc.run_config import RunConfig

for method, deploy in (("fedscgen", "plaintext"), ("scbatchprox", "crypten"), ("scgen", None)):
    RunConfig(method=method, dataset="pancreas", deploy=deploy)
RunConfig(method="fedscgen", params={"rounds": 2}, holdout=["celseq"])
print(sorted(m for m in ("torch", "flwr", "crypten") if m in sys.modules))
"""


def test_building_a_run_config_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_old_modules_reexport_the_run_package():
    assert fedsc.run_config.RunConfig is config.RunConfig
    assert fedsc.runner.execute_run is execute.execute_run
    assert fedsc.runner.load_dataset is load.load_dataset
    assert fedsc.runner.write_run is record.write_run
