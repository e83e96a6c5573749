"""The optional C kernel (edgepack/federated/_kernels.py falls back to numpy without it).

All package metadata lives in pyproject.toml; setuptools reads it and merges
these ext_modules in. ``optional=True`` lets an install without a C compiler
finish; tests/federated/test_kernels.py fails if the kernel did not build.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "edgepack.federated._fastsum",
            ["edgepack/federated/_fastsum.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
