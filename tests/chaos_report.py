"""What a chaos session found: figures from the driver, the journals and the worker logs."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LogFacts:
    """What the worker logs say happened."""

    moves_while_busy: int = 0
    busy_runs_left: int = 0
    acquisitions: int = 0
    partitions_seen: set[int] = field(default_factory=set)
    workers_started: int = 0
    ignored: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0

    @classmethod
    def read(cls, logs: list[Path]) -> LogFacts:
        facts = cls()
        for path in logs:
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    if line.strip():
                        facts.warnings["<not json> " + _generic(line)[:120]] += 1
                    continue
                if not isinstance(rec, dict):
                    continue
                facts.add(rec)
        return facts

    def add(self, rec: dict[str, Any]) -> None:
        event = str(rec.get("event", ""))
        if event == "partition_left_while_busy":
            self.moves_while_busy += 1
            self.busy_runs_left += int(rec.get("busy_runs", 0))
        elif event == "partitions_acquired":
            self.acquisitions += len(rec.get("partitions", []))
            self.partitions_seen.update(rec.get("partitions", []))
        elif event == "worker_started":
            self.workers_started += 1
        elif event == "journal_conflict":
            self.conflicts += 1
        elif event in ("input_ignored", "event_after_end"):
            self.ignored[
                f"{rec.get('input', rec.get('event'))}: {_generic(rec.get('reason', ''))}"
            ] += 1
        if rec.get("level") in ("warning", "error", "critical"):
            detail = rec.get("reason") or rec.get("error") or ""
            self.warnings[f"{rec['level']} {event}: {_generic(str(detail))[:160]}"] += 1


def _generic(text: str) -> str:
    """A log detail with its numbers and ids blanked, so like lines count together."""
    return re.sub(r"chaos\d+(-kid)?|w[0-9A-Z]{26}|\d+(\.\d+)?", "#", text)


@dataclass
class ChaosReport:
    seed: int
    runs: int
    kills: int = 0
    stops: int = 0
    starts: int = 0
    start_times: list[float] = field(default_factory=list)
    """seconds from spawning a worker to its `worker_started` (as polled)"""
    crashed: list[str] = field(default_factory=list)
    """logs of workers that exited on their own (not killed or stopped by the driver)"""
    duration_s: float = 0.0
    stuck: dict[str, str] = field(default_factory=dict)
    """run -> where it stands (status, last events) when the deadline passed"""
    wrong: dict[str, str] = field(default_factory=dict)
    """run -> the end it reached instead of the expected one"""
    unsound: dict[str, str] = field(default_factory=dict)
    duplicate_journal_facts: int = 0
    """a step or effect result journaled twice in one run (never allowed)"""
    step_reruns: int = 0
    """step executions beyond one (at-least-once: allowed when a worker died or let go mid-step)"""
    effect_reruns_at_least_once: int = 0
    effect_reruns_at_most_once: int = 0
    effects_missing: int = 0
    """journaled effect results with no execution in the side file"""
    cancelled: int = 0
    children_cancelled: int = 0
    completed: int = 0
    logs: LogFacts = field(default_factory=LogFacts)

    @property
    def partition_moves(self) -> int:
        """Acquisitions of a partition some worker had held before."""
        return self.logs.acquisitions - len(self.logs.partitions_seen)

    def figures(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "runs": self.runs,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "children_cancelled": self.children_cancelled,
            "kills": self.kills,
            "graceful_stops": self.stops,
            "graceful_starts": self.starts,
            "worker_crashes": len(self.crashed),
            "worker_start_s_median": round(statistics.median(self.start_times or [0]), 2),
            "worker_start_s_max": round(max(self.start_times or [0]), 2),
            "partition_moves": self.partition_moves,
            "moves_while_busy": self.logs.moves_while_busy,
            "busy_runs_left": self.logs.busy_runs_left,
            "journal_conflicts": self.logs.conflicts,
            "stuck_runs": len(self.stuck),
            "wrong_ends": len(self.wrong),
            "unsound_journals": len(self.unsound),
            "duplicate_journal_facts": self.duplicate_journal_facts,
            "duplicated_effects_at_most_once": self.effect_reruns_at_most_once,
            "duplicated_effects_at_least_once": self.effect_reruns_at_least_once,
            "effects_missing": self.effects_missing,
            "step_reruns": self.step_reruns,
            "duration_s": round(self.duration_s, 2),
            "ignored_inputs": dict(self.logs.ignored.most_common()),
            "log_warnings": dict(self.logs.warnings.most_common()),
        }

    def summary(self) -> str:
        return (
            f"chaos seed={self.seed} runs={self.runs} kills={self.kills} "
            f"graceful={self.stops} stops+{self.starts} starts crashes={len(self.crashed)} "
            f"partition_moves={self.partition_moves} "
            f"moves_while_busy={self.logs.moves_while_busy} stuck={len(self.stuck)} "
            f"wrong={len(self.wrong)} duplicated_effects="
            f"{self.effect_reruns_at_most_once}(at-most-once)+"
            f"{self.effect_reruns_at_least_once}(at-least-once) step_reruns={self.step_reruns} "
            f"duration={self.duration_s:.1f}s "
            f"(worker start-up median {statistics.median(self.start_times or [0]):.1f}s)"
        )
