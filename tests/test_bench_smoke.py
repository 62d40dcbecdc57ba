"""Smoke tests of the benchmarks: each workload at a tiny size; output shape only, no timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"workload", "fsync_always", "cpu_count", "runs", "concurrency"}


def run_bench(*args: str) -> dict[str, object]:
    """Run ``python -m bench ...``; return the JSON object on its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"bench {args} failed:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    assert result["workload"] == args[0]
    return result


def number(result: dict[str, object], key: str) -> float:
    """A numeric field of a result."""
    value = result[key]
    assert isinstance(value, int | float), f"{key}: {value!r}"
    return float(value)


def test_w1_throughput() -> None:
    """W1 runs and reports durable steps/s."""
    result = run_bench("w1", "--runs", "10")
    assert COMMON | {"steps_per_s", "elapsed_s", "steps"} <= result.keys()
    assert result["runs"] == 10


def test_w2_step_latency() -> None:
    """W2 runs and reports per-step and per-run latency percentiles."""
    result = run_bench("w2", "--runs", "3", "--warmup", "1")
    assert COMMON | {"step_p50_ms", "step_p99_ms", "run_p50_ms"} <= result.keys()
    assert result["runs"] == 3


def test_w3_resume_latency() -> None:
    """W3 runs and reports resume latency percentiles."""
    result = run_bench("w3", "--runs", "5")
    assert COMMON | {"resume_p50_ms", "resume_p99_ms"} <= result.keys()
    assert result["runs"] == 5


def test_w4_crash_recovery() -> None:
    """W4 kills a worker mid-flight; every run completes with no duplicate journal step."""
    result = run_bench("w4", "--runs", "10", "--kill-after", "0.3")
    keys = {
        "runs_completed",
        "duplicate_lines",
        "duplicate_journal_steps",
        "recovery_s",
        "completed_before_kill",
        "lines_at_kill",
    }
    assert COMMON | keys <= result.keys()
    assert result["runs_completed"] == 10
    assert result["duplicate_journal_steps"] == 0


def test_w5_audit_speed() -> None:
    """W5 writes genuine journals and reports events/s verified from the stream."""
    result = run_bench("w5", "--runs", "20", "--events", "20", "--rounds", "1")
    assert {"workload", "fsync_always", "cpu_count", "events", "events_per_s"} <= result.keys()
    assert result["events"] == 400


def test_w6_projection_lag() -> None:
    """W6 projects while W1 runs; reports lag percentiles and projector throughput."""
    result = run_bench("w6", "--runs", "10", "--rounds", "1")
    keys = {"lag_p50_s", "lag_p99_s", "projector_events_per_s", "rebuild_events"}
    assert keys <= result.keys()
    assert result["rebuild_events"] == 11 * 12  # warm-up + 10 runs of 12 events, all projected


def test_late_event_flood() -> None:
    """The late-event flood workload runs and reports both latencies (shape only)."""
    result = run_bench("late", "--runs", "5", "--flood", "200")
    assert result["flood"] == 200
    assert result["dead_letters_kept"] == 200
    assert isinstance(result["flood_to_quiet_p50"], float)


def test_w8_effects_through_handlers() -> None:
    """W8 sends effects through handler processes; reports latency and both throughputs."""
    sizes = ("--seq-runs", "3", "--seq-effects", "4", "--runs", "5", "--effects", "3")
    result = run_bench("w8", *sizes, "--warmup", "1")
    keys = {"effect_p50_ms", "effect_p99_ms", "run_p50_ms", "effects_per_s"}
    assert COMMON | keys | {"effects_per_s_2_handlers", "handler_concurrency"} <= result.keys()
    assert result["effect_samples"] == 12
    assert 0 < number(result, "effect_p50_ms") <= number(result, "effect_p99_ms")
    assert number(result, "effects_per_s") > 0
    assert number(result, "effects_per_s_2_handlers") > 0
    busy = result["cpu_busy_2_handlers"]
    assert isinstance(busy, dict)
    assert {"worker1", "handlers1", "handlers2"} <= busy.keys()


def test_w9_agent_overhead() -> None:
    """W9 runs agent-shaped runs to the end; reports overhead fractions over the work."""
    result = run_bench("w9", "--runs", "4", "--warmup", "1")
    keys = {"overhead_p50", "overhead_p99", "gross_overhead_p50", "gap_p50_ms", "work_p50_ms"}
    assert COMMON | keys <= result.keys()
    assert result["runs"] == 4
    assert number(result, "handler_concurrency") >= 4
    assert number(result, "work_p50_ms") > 0
    assert number(result, "overhead_p50") <= number(result, "overhead_p99")
    assert number(result, "gap_p50_ms") >= 0


def test_floor_of_the_broker_hops() -> None:
    """The floor probe reports acked publish rates on both paths and a bare W3 resume."""
    result = run_bench("floor", "--publishes", "400", "--in-flight", "20", "--resumes", "20")
    keys = {"acked_publishes_per_s", "acked_publishes_per_s_nats_py", "bare_resume_p50_ms"}
    assert {"workload", "fsync_always", "cpu_count", "commit"} | keys <= result.keys()
    assert number(result, "acked_publishes_per_s") > 0
    assert number(result, "acked_publishes_per_s_nats_py") > 0
    assert 0 < number(result, "bare_resume_p50_ms") <= number(result, "bare_resume_p99_ms")


def test_w10_a_tenant_beside_one_at_its_quota() -> None:
    """W10 fills one tenant's storage and measures the other's W1 alone and beside it."""
    result = run_bench("w10", "--runs", "5", "--steps", "3", "--rounds", "1", "--flood-rate", "20")
    keys = {"steps_per_s_alone", "steps_per_s_beside_full_tenant", "ratio", "acme_refusals_per_s"}
    assert {"workload", "fsync_always", "cpu_count", "runs"} | keys <= result.keys()
    assert number(result, "steps_per_s_alone") > 0
    assert number(result, "steps_per_s_beside_full_tenant") > 0
    assert number(result, "acme_refusals_per_s") > 0
