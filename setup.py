"""The optional native HTTP/2 codec (decision 0097); everything else is in pyproject.toml.

`gossamer.proxy.wire._h2native` wraps libnghttp2's HPACK, and its nghttp2_session as a
whole HTTP/2 connection (decision 0102). It is built when a C compiler,
Python's headers and libnghttp2's (Debian: gcc, python3-dev, libnghttp2-dev) are
present; otherwise the build says why and the install goes on without it, and the
proxy carries HTTP/2 on the pure-Python codec (h2's hpack), saying so once when it
starts.
"""

from __future__ import annotations

import shutil
import subprocess

from setuptools import Extension, setup


def _nghttp2_flags() -> tuple[list[str], list[str], list[str]]:
    """Include dirs, library dirs and libraries for libnghttp2, from pkg-config if any."""
    if shutil.which("pkg-config"):
        try:
            out = subprocess.run(
                ["pkg-config", "--cflags-only-I", "--libs", "libnghttp2"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
        except subprocess.CalledProcessError:
            out = []
        if out:
            return (
                [f[2:] for f in out if f.startswith("-I")],
                [f[2:] for f in out if f.startswith("-L")],
                [f[2:] for f in out if f.startswith("-l")] or ["nghttp2"],
            )
    return [], [], ["nghttp2"]


include_dirs, library_dirs, libraries = _nghttp2_flags()

setup(
    ext_modules=[
        Extension(
            "gossamer.proxy.wire._h2native",
            sources=["src/gossamer/proxy/wire/_h2native.c"],
            # HPACK (_h2native.c) and the whole connection on nghttp2_session, which
            # _h2native.c includes (_h2session.c, decision 0102), and the header block
            # checks (_h2fields.c, decision 0115): one module.
            depends=[
                "src/gossamer/proxy/wire/_h2session.c",
                "src/gossamer/proxy/wire/_h2fields.c",
            ],
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            libraries=libraries,
            extra_compile_args=["-O2"],
            # No compiler or no libnghttp2-dev: a warning, and the pure-Python codec.
            optional=True,
        ),
        Extension(
            "gossamer.proxy.wire._h1native",
            sources=["src/gossamer/proxy/wire/_h1native.c"],
            extra_compile_args=["-O2"],
            # No compiler: a warning, and llhttp reads every HTTP/1.1 message (decision 0115).
            optional=True,
        ),
    ],
)
