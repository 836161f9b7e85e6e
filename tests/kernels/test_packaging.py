"""`pip install .` (without build isolation) builds and ships the native op: no JIT at run time."""
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_builds_and_contains_the_native_library(tmp_path):
    # a fresh checkout has no prebuilt library (it is git-ignored): the wheel's must come from CMake
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(REPO), str(src)], check=True, timeout=120)
    assert not (src / "src/fda/kernels/_native/libfda_kernels.so").exists()
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          str(src), "-w", str(tmp_path / "dist")], timeout=900, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fda-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fda/kernels/_native/libfda_kernels.so" in names
    assert "fda/kernels/csrc/hash.h" in names
