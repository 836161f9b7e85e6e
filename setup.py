"""`pip install .` builds the native drift-state op with CMake, like `make native` does.

The op links against the torch it will run with, so build without isolation, in the
environment that has torch:  pip install --no-build-isolation .
Without torch or cmake in that environment the package installs without the op and
fda.kernels falls back to its pure-torch reference (with a warning). FDA_SKIP_NATIVE=1
skips the build. Editable installs (`make setup`) build it with `make native` instead.
"""
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _cmake() -> str | None:
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake  # the PyPI package

        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        return None


class BuildPyWithNative(build_py):
    def run(self):
        super().run()
        if os.environ.get("FDA_SKIP_NATIVE") == "1" or getattr(self, "editable_mode", False):
            return  # editable installs (make setup) build it in place with `make native`
        cmake = _cmake()
        try:
            import torch  # noqa: F401
        except ImportError:
            cmake = None
        if cmake is None:
            warnings.warn("fda: torch or cmake not importable at build time: the native op is not built "
                          "(use pip install --no-build-isolation . in an environment with torch and cmake)")
            return
        out = Path(self.build_lib) / "fda" / "kernels" / "_native"
        build = ROOT / "build" / "native-pip"
        subprocess.check_call([cmake, "-S", str(ROOT), "-B", str(build), f"-DFDA_PYTHON={sys.executable}",
                               f"-DFDA_NATIVE_DIR={out.resolve()}", "-DCMAKE_BUILD_TYPE=Release"])
        subprocess.check_call([cmake, "--build", str(build), "--parallel"])


setup(cmdclass={"build_py": BuildPyWithNative})
