"""``benchmarks/gpu_check.py --device cpu --tiny`` in the test suite: the GPU check script itself runs and its
paths agree (on the CPU; on a GPU it is run by hand, see benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["all_equal"] and [e["model"] for e in doc["equality"]] == ["mlp", "convnet", "resnet"]
    assert all("noise_max_examples_differing" in e["fast"] for e in doc["equality"])
