"""The one compiled piece of vpnedu: OpenSSL's AEAD with less glue (vpnedu/protocol/openssl_aead.c).

Everything else is in pyproject.toml.  The extension is optional: without a C compiler, Python's
headers or OpenSSL's (Debian: gcc, python3-dev, libssl-dev), the install goes on without it and
vpnedu encrypts through the `cryptography` package instead (same bytes, a little slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vpnedu.protocol.openssl_aead",
            sources=["vpnedu/protocol/openssl_aead.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
