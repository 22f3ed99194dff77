"""shared/policy and shared/sim stay pure: no I/O frameworks, no clock reads in policy code; shared/policy
also imports no service, transport or telemetry code and opens no files (it takes data, not paths)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("nats", "redis", "fastapi", "torch", "opentelemetry")
# What shared/policy may not import besides FORBIDDEN: the processes around it.
POLICY_FORBIDDEN = ("services", "shared.transport", "shared.telemetry")
# Reading or writing files: open(), pathlib's read/write/open, json/yaml/msgspec loading from files.
FILE_IO = re.compile(r"(?<![\w.])open\(|\.(read_text|read_bytes|write_text|write_bytes|open)\(|\bjson\.(load|dump)\("
                     r"|\byaml\.(safe_)?load\(|\bnp\.(load|save)|\bos\.(listdir|scandir|walk)\(|\.(glob|iterdir)\(")


def policy_files() -> list[Path]:
    return sorted((ROOT / "shared" / "policy").rglob("*.py"))


def test_no_forbidden_imports_at_runtime():
    code = ("import sys, shared.policy.policies, shared.policy.quality, shared.sim.cli, shared.sim.runner, "
            "shared.sim.plots; bad = [m for m in sys.modules if m.split('.')[0] in %r]; print(','.join(bad))"
            % (FORBIDDEN,))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_policy_imports_no_services_transport_or_telemetry_at_runtime():
    mods = ", ".join(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in policy_files()
                     if p.name != "__init__.py")
    code = (f"import sys, {mods}; bad = [m for m in sys.modules if any(m == b or m.startswith(b + '.') "
            f"for b in {POLICY_FORBIDDEN!r})]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_forbidden_import_statements_or_clock_reads():
    for path in list((ROOT / "shared" / "policy").glob("*.py")) + list((ROOT / "shared" / "sim").glob("*.py")):
        text = path.read_text()
        for mod in FORBIDDEN:
            assert not re.search(rf"^\s*(import|from)\s+{mod}\b", text, re.M), (path, mod)
        if path.parent.name == "policy":
            assert not re.search(r"\btime\.(time|monotonic|perf_counter|sleep)\(|datetime\.now|asyncio", text), path


def test_policy_import_statements_and_file_io():
    for path in policy_files():
        text = path.read_text()
        for mod in POLICY_FORBIDDEN:
            assert not re.search(rf"^\s*(import|from)\s+{re.escape(mod)}\b", text, re.M), (path, mod)
        assert not re.search(r"^\s*(import|from)\s+(pathlib|shared\.profiles|shared\.config)\b", text, re.M), path
        hit = FILE_IO.search(text)
        assert hit is None, (path, hit and hit.group(0))


def test_file_io_pattern_catches_the_usual_spellings():
    for snippet in ("open(p)", "Path(p).read_text()", "json.load(f)", "p.open('w')", "json.dump(x, f)",
                    "yaml.safe_load(f)", "p.glob('*.json')", "q.write_text(s)"):
        assert FILE_IO.search(snippet), snippet
    for snippet in ("json.loads(s)", "json.dumps(x)", "reopen(x)", "self.opened(x)"):
        assert not FILE_IO.search(snippet), snippet
