"""The load test of bench/labeling.py at full size: 50 concurrent labelers, 2,000
rankings, the server SIGKILLed and restarted midway; every acknowledged submission is
stored exactly once and nothing else is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fifty_labelers_through_a_crash(tmp_path):
    out = tmp_path / "labeling.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "labeling.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["labelers"] == 50 and result["distinct_acknowledged"] == 2000
    assert result["rows_in_database"] == 2000
    assert result["acknowledged_missing"] == result["rows_not_acknowledged"] == result["rows_stored_twice"] == 0
    assert result["killed_after"] >= 1000 and result["retried_requests"] > 0  # the crash happened mid-load
    assert result["refused"] == 0 and result["prompts_over_limit"] == 0
