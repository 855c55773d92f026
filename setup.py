"""Build script for convext's compiled kernels.

Switches read from the environment at build time:

CONVEXT_NO_OPENMP=1     build without OpenMP even where the compiler has it.
CONVEXT_CYTHON_DEBUG=1  turn Cython's bounds, wraparound and initialisation checks on,
                        so that an out-of-bounds index raises IndexError instead of
                        corrupting memory (slow; for testing).
CONVEXT_PROFILE=1       a profiling build: Cython's profiling and line tracing (nogil
                        code included), debug symbols and frame pointers, so that
                        cProfile and line_profiler see the Cython functions and perf or
                        py-spy --native see the C frames by name.
CONVEXT_ANNOTATE=1      also write Cython's HTML annotation of each .pyx beside it.
CONVEXT_PORTABLE=1      compile for the compiler's default instruction set instead of
                        the building machine's own (-march=native), for an extension
                        that must run on other processors than the one that built it.
"""

import os
import subprocess
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError, LinkError

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int threads = 0;
        #pragma omp parallel reduction(+:threads)
        threads += 1;
        return threads > 0 ? 0 : 1;
    }
    """
)

NATIVE_PROBE = "int main(void) { return 0; }\n"

# Flags per compiler family, picked in build_extensions once the compiler is known.
# -ffp-contract=fast lets gcc fuse a * b + c into one instruction, which -std=c11
# alone forbids. -fno-tree-loop-distribute-patterns keeps short copy loops (a tap's
# few channels) inline instead of turning each into a call to memcpy.
COMPILE_ARGS = {
    "unix": ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast",
             "-fno-tree-loop-distribute-patterns"],
    "msvc": ["/O2"],
}
PROFILE_ARGS = {
    "unix": ["-g", "-fno-omit-frame-pointer"],
    "msvc": ["/Zi"],
}
# Instructions of the building machine (AVX2, AVX-512 where it has them), which the
# batch-norm, pooling, ReLU and gather loops are vectorised with.
NATIVE_ARGS = {
    "unix": ["-march=native"],
}
OPENMP_ARGS = {
    "unix": (["-fopenmp"], ["-fopenmp"]),
    "msvc": (["/openmp"], []),
}


def env_flag(name):
    return os.environ.get(name, "").strip() not in ("", "0", "false", "False")


def cython_directives():
    checks = env_flag("CONVEXT_CYTHON_DEBUG")
    profile = env_flag("CONVEXT_PROFILE")
    return {
        "language_level": 3,
        "boundscheck": checks,
        "wraparound": False,
        "initializedcheck": checks,
        "cdivision": not checks,
        "embedsignature": True,
        "profile": profile,
        "linetrace": profile,
    }


def build_macros():
    profile = env_flag("CONVEXT_PROFILE")
    macros = [
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ("CONVEXT_CYTHON_DEBUG", "1" if env_flag("CONVEXT_CYTHON_DEBUG") else "0"),
        ("CONVEXT_PROFILE_BUILD", "1" if profile else "0"),
    ]
    if profile:
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    return macros


def compiler_runs(compiler, program_text, compile_args, link_args):
    """Compile, link and run a tiny program; True when all three work."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(program_text)
        try:
            objects = compiler.compile(
                [source], output_dir=tmp, extra_postargs=compile_args
            )
            program = os.path.join(tmp, "probe")
            compiler.link_executable(
                objects, program, extra_postargs=link_args
            )
            subprocess.run([program], check=True, capture_output=True)
        except (CompileError, LinkError, OSError, subprocess.CalledProcessError):
            return False
    return True


class BuildExt(build_ext):
    def build_extensions(self):
        family = self.compiler.compiler_type
        compile_args = list(COMPILE_ARGS.get(family, []))
        link_args = []
        if env_flag("CONVEXT_PROFILE"):
            compile_args += PROFILE_ARGS.get(family, [])
        native_args = NATIVE_ARGS.get(family, [])
        native = False
        if native_args and not env_flag("CONVEXT_PORTABLE"):
            native = compiler_runs(self.compiler, NATIVE_PROBE, native_args, [])
            if native:
                compile_args += native_args
            else:
                self.warn("the C compiler refused -march=native: a portable build")

        use_openmp = False
        if not env_flag("CONVEXT_NO_OPENMP") and family in OPENMP_ARGS:
            omp_compile, omp_link = OPENMP_ARGS[family]
            use_openmp = compiler_runs(self.compiler, OPENMP_PROBE, omp_compile,
                                       omp_link)
            if use_openmp:
                compile_args += omp_compile
                link_args += omp_link
            else:
                self.warn(
                    "the C compiler has no OpenMP: building single-threaded kernels"
                )

        for ext in self.extensions:
            ext.define_macros.append(("CONVEXT_NATIVE_BUILD", "1" if native else "0"))
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
        super().build_extensions()


extensions = [
    Extension(
        "convext._kernels",
        sources=["convext/_kernels.pyx"],
        include_dirs=[np.get_include(), "csrc"],
        define_macros=build_macros(),
        depends=["csrc/convext_omp.h", "csrc/convext_lanes.h",
                 "csrc/convext_batchnorm.h", "csrc/convext_direct.h"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=cython_directives(),
        annotate=env_flag("CONVEXT_ANNOTATE"),
    ),
    cmdclass={"build_ext": BuildExt},
)
