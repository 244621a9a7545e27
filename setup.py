"""Build hook for the optional compiled build (everything else is in pyproject.toml).

    pip install .                                              # pure Python (the default)
    POLICYD_COMPILE=1 pip install --no-build-isolation .       # hot path compiled with mypyc

The compiled build needs a C compiler, the Python headers, and setuptools, wheel and mypy (which
ships mypyc) in the environment that builds; it compiles the modules listed in policyd/build.py.
The wheel it makes is for this Python version and platform only.
"""

import os
import runpy
import sys

import setuptools
from setuptools import setup

#: pyproject.toml's SPDX `license = "MIT"` needs setuptools 77 (Debian 12 has 65, whose own
#: error is a cryptic "project.license must be valid exactly by one definition").
MIN_SETUPTOOLS = 77
_have = setuptools.__version__
if int(_have.split(".")[0]) < MIN_SETUPTOOLS:
    sys.exit(
        f"policyd needs setuptools>={MIN_SETUPTOOLS} to build; this Python has setuptools "
        f"{_have}. Use pip's default build isolation (`pip install .` fetches a new enough "
        f"setuptools), or first `pip install 'setuptools>={MIN_SETUPTOOLS}' wheel` in the venv "
        "when building with --no-build-isolation (the compiled build)."
    )

ext_modules = []
if os.environ.get("POLICYD_COMPILE") == "1":
    from mypyc.build import mypycify

    here = os.path.dirname(os.path.abspath(__file__))
    modules = runpy.run_path(os.path.join(here, "policyd", "build.py"))["COMPILED_MODULES"]

    def source(name: str) -> str:  # a module's file, or a package's __init__.py
        path = os.path.join(*name.split("."))
        return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"

    sources = [source(name) for name in modules]
    opt_level = os.environ.get("MYPYC_OPT_LEVEL", "3")
    try:  # the shared runtime library: policyd__mypyc.*.so
        ext_modules = mypycify(sources, opt_level=opt_level, group_name="policyd")
    except TypeError:  # Debian 13's mypy 1.15 has no group_name: a hash names the runtime
        ext_modules = mypycify(sources, opt_level=opt_level)

setup(ext_modules=ext_modules)
