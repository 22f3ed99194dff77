"""shared/policy and shared/sim stay pure: no I/O frameworks, no clock reads in policy code."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("nats", "redis", "fastapi", "torch", "opentelemetry")


def test_no_forbidden_imports_at_runtime():
    code = ("import sys, shared.policy.policies, shared.policy.quality, shared.sim.cli, shared.sim.runner, "
            "shared.sim.plots; bad = [m for m in sys.modules if m.split('.')[0] in %r]; print(','.join(bad))"
            % (FORBIDDEN,))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_forbidden_import_statements_or_clock_reads():
    for path in list((ROOT / "shared" / "policy").glob("*.py")) + list((ROOT / "shared" / "sim").glob("*.py")):
        text = path.read_text()
        for mod in FORBIDDEN:
            assert not re.search(rf"^\s*(import|from)\s+{mod}\b", text, re.M), (path, mod)
        if path.parent.name == "policy":
            assert not re.search(r"\btime\.(time|monotonic|perf_counter|sleep)\(|datetime\.now|asyncio", text), path
