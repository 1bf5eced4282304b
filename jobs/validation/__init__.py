"""Validation: the image probe, the GX suites, the fused expectation pass and the suite profiler."""
