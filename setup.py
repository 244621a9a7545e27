"""Build hook for the optional compiled build (everything else is in pyproject.toml).

    pip install .                                              # pure Python (the default)
    POLICYD_COMPILE=1 pip install --no-build-isolation .       # hot path compiled with mypyc

The compiled build needs a C compiler, the Python headers, and setuptools, wheel and mypy (which
ships mypyc) in the environment that builds; it compiles the modules listed in policyd/build.py.
The wheel it makes is for this Python version and platform only.
"""

import os
import runpy

from setuptools import setup

ext_modules = []
if os.environ.get("POLICYD_COMPILE") == "1":
    from mypyc.build import mypycify

    here = os.path.dirname(os.path.abspath(__file__))
    modules = runpy.run_path(os.path.join(here, "policyd", "build.py"))["COMPILED_MODULES"]

    def source(name: str) -> str:  # a module's file, or a package's __init__.py
        path = os.path.join(*name.split("."))
        return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"

    ext_modules = mypycify(
        [source(name) for name in modules],
        opt_level=os.environ.get("MYPYC_OPT_LEVEL", "3"),
        group_name="policyd",  # the shared runtime library: policyd__mypyc.*.so
    )

setup(ext_modules=ext_modules)
