"""Build hook for the optional compiled accelerator (everything else is in pyproject.toml).

``tokmesh._accel`` is built when a C compiler and the Python headers are present and
skipped with a warning otherwise (``optional=True``): TokMesh then runs its pure-Python
path, which gives the same answers. See docs/architecture.md, "The compiled accelerator".
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tokmesh._accel",
            sources=["tokmesh/_accel.c"],
            optional=True,
        )
    ]
)
