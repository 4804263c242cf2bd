"""Helpers for tests, the demo and benchmarks: a local S3 endpoint and sample data."""
