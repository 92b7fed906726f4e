import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_library_quickstart_runs_as_written_and_learns():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "library_quickstart.py")], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("step")]
    first, last = float(lines[0].split()[3]), float(lines[-1].split()[3])
    assert last < 0.6 * first
    assert "lr 2.00e-03" in lines[-1]  # cosine ends at min_lr
    assert "['TensorParallelMuon', 'AdamW']" in out.stdout
