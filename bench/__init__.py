"""Mainspring benchmarks: ``python -m bench <w1|w2|w3|w4> [--fsync-always]``.

Each run starts its own nats-server in a temp dir and a worker subprocess, drives
the workload from this process, and prints one JSON object as the last stdout line.
"""
