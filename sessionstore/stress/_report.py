"""Turn what the harness observed into a :class:`StressReport` with one check per invariant."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter

from ._models import Check, StressOptions, StressReport, WorkerResult
from ._verify import AckRecord, DbFindings, StderrFindings, Tracked

__all__ = ["build_report"]


def build_report(
    opts: StressOptions,
    *,
    procs: list[subprocess.Popen[bytes]],
    exit_s: dict[int, float],
    hung: set[int],
    records: list[AckRecord],
    stderr: list[StderrFindings],
    db: DbFindings,
    descendants: list[Tracked],
    orphans: list[Tracked],
    left: list[Tracked],
    timings: dict[str, float],
    acks_during_load: int,
    storm_wall: float,
    wal: tuple[int, int],
    work_dir: str | None,
) -> StressReport:
    """Assemble the report (per-worker results, totals and the invariant checks)."""
    per_worker_desc = Counter(t.worker for t in descendants)
    per_worker_orphans = Counter(t.worker for t in orphans)
    workers = []
    for i, proc in enumerate(procs):
        rec, err, found = records[i], stderr[i], db.sessions[i]
        workers.append(
            WorkerResult(
                index=i,
                pid=proc.pid,
                session_id=rec.session_id,
                exit_code=proc.returncode,
                exit_s=round(exit_s[i], 4) if i in exit_s else None,
                hung=i in hung,
                acked=rec.acked,
                missing=found.missing,
                write_errors=len(rec.errors),
                busy_errors=err.busy_lines,
                tracebacks=err.tracebacks,
                children=len(rec.child_pids),
                descendants=per_worker_desc[i],
                orphans=per_worker_orphans[i],
                child_rows_running=found.child_rows_running,
                session_status=found.status,
                shutdown_started_s=(
                    None if rec.shutdown_at is None else round(rec.shutdown_at - storm_wall, 4)
                ),
                stderr_tail=err.tail,
                hang_dump=err.hang_dump,
            )
        )
    acked = sum(w.acked for w in workers)
    missing = sum(w.missing for w in workers)
    report = StressReport(
        baseline=opts.baseline,
        db_path=opts.db_path,
        procs=opts.procs,
        children=opts.children,
        stubborn=opts.stubborn,
        seconds=opts.seconds,
        rate=opts.rate,
        exit_budget_s=opts.budget,
        deadline_s=opts.deadline,
        startup_s=round(timings["startup"], 3),
        load_s=round(timings["load"], 3),
        storm_s=round(timings["storm"], 3),
        acked=acked,
        present=acked - missing,
        missing=missing,
        replayed_at_verify=db.replayed,
        write_errors=sum(w.write_errors for w in workers),
        busy_errors=sum(w.busy_errors for w in workers),
        tracebacks=sum(w.tracebacks for w in workers),
        hung=len(hung),
        bad_exits=sum(w.exit_code != -signal.SIGTERM for w in workers),
        late_exits=sum(
            (not w.hung) and w.exit_s is not None and w.exit_s > opts.budget for w in workers
        ),
        descendants=len(descendants),
        orphans=len(orphans),
        orphans_left=len(left),
        child_rows_running=sum(w.child_rows_running for w in workers),
        active_sessions=sum(w.session_status == "active" for w in workers),
        integrity=db.integrity,
        wal_bytes_peak=wal[0],
        wal_bytes_after=wal[1],
        throughput_ops_s=round(acks_during_load / timings["load"], 1) if timings["load"] else 0.0,
        work_dir=work_dir,
        workers=workers,
    )
    return report.model_copy(update={"checks": _checks(report, opts.settle_s)})


def _checks(r: StressReport, settle_s: float) -> list[Check]:
    codes = Counter(w.exit_code for w in r.workers if w.exit_code != -signal.SIGTERM)
    slowest = max((w.exit_s or 0.0 for w in r.workers if not w.hung), default=0.0)
    no_session = sum(w.session_id is None for w in r.workers)
    return [
        Check(
            name="exit_status",
            ok=r.bad_exits == 0,
            detail=f"{r.procs - r.bad_exits} of {r.procs} died by SIGTERM (-15)"
            + (f"; others: {_codes(codes)}" if codes else ""),
        ),
        Check(
            name="exit_budget",
            ok=r.late_exits == 0 and r.hung == 0,
            detail=f"slowest exit {slowest:.2f} s, budget {r.exit_budget_s:.1f} s"
            + (f"; {r.late_exits} late" if r.late_exits else "")
            + (f"; {r.hung} never exited" if r.hung else ""),
        ),
        Check(
            name="no_hung",
            ok=r.hung == 0,
            detail=f"{r.hung} killed at the {r.deadline_s:.1f} s deadline",
        ),
        Check(
            name="no_orphans",
            ok=r.orphans == 0,
            detail=f"{r.orphans} of {r.descendants} children/grandchildren alive "
            f"{settle_s:.1f} s after their orchestrator exited"
            + (f" (killed by the harness; {r.orphans_left} would not die)" if r.orphans else ""),
        ),
        Check(name="integrity", ok=r.integrity == "ok", detail=r.integrity),
        Check(
            name="acked_writes_present",
            ok=r.missing == 0 and no_session == 0,
            detail=f"{r.present} of {r.acked} acknowledged writes present"
            + (f" ({r.replayed_at_verify} from the journal)" if r.replayed_at_verify else "")
            + (f"; {no_session} orchestrators never created a session" if no_session else ""),
        ),
        Check(
            name="no_active_sessions",
            ok=r.active_sessions == 0,
            detail=f"{r.active_sessions} sessions left active",
        ),
        Check(
            name="child_rows_ended",
            ok=r.child_rows_running == 0,
            detail=f"{r.child_rows_running} child rows left 'running'",
        ),
        Check(
            name="no_busy_errors",
            ok=r.busy_errors == 0,
            detail=f"{r.busy_errors} BUSY/locked reports",
        ),
        Check(
            name="no_tracebacks",
            ok=r.tracebacks == 0,
            detail=f"{r.tracebacks} tracebacks",
        ),
        Check(
            name="no_write_errors",
            ok=r.write_errors == 0,
            detail=f"{r.write_errors} write calls raised",
        ),
        Check(
            name="harness_cleanup",
            ok=r.orphans_left == 0,
            detail=f"{r.orphans_left} processes survived the harness's SIGKILL",
        ),
    ]


def _codes(codes: Counter[int | None]) -> str:
    def name(code: int | None) -> str:
        if code is None:
            return "running"
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return str(code)
        return f"exit {code}"

    return ", ".join(f"{n}x {name(c)}" for c, n in codes.most_common())
