"""The bundled Great Expectations suites (GX Core 1.x JSON), one per sample dataset kind.

A package only so that the suites install with fulcrum (``pip install .``, the wheel, the
container image); ``jobs.validation.suites.bundled`` finds them with ``importlib.resources``.
"""
