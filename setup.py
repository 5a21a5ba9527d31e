"""Build the compiled hot path `fastmirror._core` (metadata lives in pyproject.toml).

MagicStack style (uvloop, httptools): a build_ext that cythonizes only when needed,
with --cython-always, --cython-annotate and --cython-directives, e.g.

    python setup.py build_ext --inplace --cython-annotate   # src/fastmirror/_core.html
    python setup.py build_ext --inplace --cython-directives=linetrace=true
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CYTHON_DEPENDENCY = "Cython>=3.0"
CFLAGS = [os.getenv("FASTMIRROR_OPT_CFLAGS", "-O2")]
CORE_PYX = "src/fastmirror/_core.pyx"


def _fresh(cfile: str, pyx: str) -> bool:
    """The generated C exists and is not older than its source (so no Cython needed)."""
    return os.path.exists(cfile) and os.path.getmtime(cfile) >= os.path.getmtime(pyx)


class fastmirror_build_ext(build_ext):
    user_options = build_ext.user_options + [
        ("cython-always", None, "run cythonize() even if .c files are present"),
        ("cython-annotate", None, "produce a colorized HTML version of the Cython source"),
        ("cython-directives=", None, "Cython compiler directives, e.g. a=true,b=false"),
    ]

    boolean_options = build_ext.boolean_options + ["cython-always", "cython-annotate"]

    def initialize_options(self):
        super().initialize_options()
        self.cython_always = False
        self.cython_annotate = None
        self.cython_directives = None

    def finalize_options(self):
        # Unlike uvloop, a stale .c (older than the .pyx) is regenerated, so an edit to
        # the .pyx followed by `pip install -e .` never builds yesterday's code.
        force = bool(self.cython_always or self.cython_annotate or self.cython_directives)
        need_cythonize = force
        for extension in self.distribution.ext_modules:
            for i, source in enumerate(extension.sources):
                if source.endswith(".pyx"):
                    cfile = source[:-4] + ".c"
                    if not force and _fresh(cfile, source):
                        extension.sources[i] = cfile
                    else:
                        need_cythonize = True

        if need_cythonize:
            try:
                import Cython
            except ImportError:
                raise RuntimeError(
                    f"please install {CYTHON_DEPENDENCY} to compile fastmirror from source"
                ) from None
            if int(Cython.__version__.split(".")[0]) < 3:
                raise RuntimeError(
                    f"fastmirror requires {CYTHON_DEPENDENCY}, got Cython=={Cython.__version__}")

            from Cython.Build import cythonize

            directives = {"language_level": 3}
            if self.cython_directives:
                for directive in self.cython_directives.split(","):
                    k, _, v = directive.partition("=")
                    if v.lower() == "false":
                        v = False
                    elif v.lower() == "true":
                        v = True
                    directives[k.strip()] = v

            self.distribution.ext_modules[:] = cythonize(
                self.distribution.ext_modules,
                compiler_directives=directives,
                annotate=bool(self.cython_annotate),
                force=force,
                emit_linenums=bool(self.debug),
            )

        super().finalize_options()


setup(
    cmdclass={"build_ext": fastmirror_build_ext},
    ext_modules=[
        Extension("fastmirror._core", sources=[CORE_PYX], extra_compile_args=CFLAGS),
    ],
)
