"""Test material shared by the test suite and later jobs' tests (no test framework imports here)."""
