"""Build hook for the Cython extensions; everything else is declared in setup.cfg."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "pipeline.nms",
        ["pipeline/nms.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    Extension(
        "pipeline.spectrogram_kernels",
        ["pipeline/spectrogram_kernels.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # -O3 vectorises the inner loops over frequency bins (baseline x86-64 SIMD only:
        # no -march=native, so that a built wheel runs on any x86-64 machine).
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=cythonize(extensions, language_level="3"))
