"""The close sequence of a store: drain leases, apply the queue, replay, checkpoint, release.

``SessionStore.close()`` makes the store CLOSING (new writes queue up, see ``_routing``) and
hands the rest to :class:`CloseSequence`:

1. stop the checkpoint timer thread;
2. wait for leases in flight, at most the close timeout; past it they are abandoned and their
   connections interrupted (the writer's busy waits give up: ``Writer.abandon_waits``);
3. apply the queued ops in batches, each ending applied, kept aside, journaled or reported
   unrecorded, and turn CLOSED (later writes are journaled);
4. replay the journal if anything is in it and time is left;
5. a TRUNCATE checkpoint (busy is normal while other processes use the database);
6. close every connection (never one inherited across fork).

One deadline runs through it, on the store's injected clock (the one its writer and retry
policy use): every phase gets what is left of the timeout, and the phases after the lease
drain get at least :data:`CLOSE_GRACE_S` between them. The durations in the report are on the
same clock. Rejected: measuring the phases on ``time.monotonic()`` while the deadlines ran on
the injected clock (two clocks in one sequence: a test's fake clock moved some deadlines and
not others).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import apsw

from ._files import wal_size
from ._forkgate import FORK_GATE
from ._journal import Journal, apply_isolated
from ._leases import Gate
from ._models import CloseReport
from ._ops import Op
from ._readers import ReaderPool
from ._routing import WriteRouter
from ._writer import BATCH, BatchDeadlineError, Writer

__all__ = ["CLOSE_GRACE_S", "LET_GO_S", "CloseSequence", "close_connections"]

# close() returns within its timeout plus this grace (plus the final checkpoint's busy wait,
# ``checkpoint_busy_timeout_ms``, and closing the connections, a few milliseconds): the queue
# and the journal replay get at least CLOSE_GRACE_S after the lease drain, and each of the two
# waits for the writer to let go (LET_GO_S) is bounded apart from it. The README derives the
# operator budgets (systemd, docker) from this.
CLOSE_GRACE_S = 0.25
LET_GO_S = 0.1


class DrainOutcome:
    """What draining the queue at close did, filled in as it goes."""

    def __init__(self, errors: list[str], lock_wait_s: Callable[[], float]) -> None:
        self.errors = errors
        self.lock_wait_s = lock_wait_s  # how long journaling may wait for the journal's lock
        self.applied = 0
        self.rejected = 0
        self.unrecorded: list[str] = []

    def secure(self, router: WriteRouter, ops: Sequence[Op], reason: str) -> None:
        """Journal ops the drain could not apply; if even that fails, report them unrecorded.

        Never raises ``Exception``.
        """
        why = router.secure(ops, reason, lock_wait_s=self.lock_wait_s())
        if why is not None:
            self.errors.append(f"{len(ops)} queued op(s) neither applied nor journaled: {why}")
            self.unrecorded.extend(op.line.decode().rstrip("\n") for op in ops)


def close_connections(readers: ReaderPool, writer: Writer, pid: int, errors: list[str]) -> None:
    """Close every connection of a store; errors are appended, never raised.

    A store inherited across fork (``pid`` is not this process) closes nothing: SQLite's close
    in the child could delete state out from under the parent.
    """
    if pid != os.getpid():
        return
    for conn in readers.take_all():
        with FORK_GATE.section():
            try:
                conn.close()
            except apsw.Error as err:
                errors.append(f"close: {type(err).__name__}: {err}")
                with contextlib.suppress(apsw.Error):
                    conn.close(True)
    errors.extend(writer.close())


@dataclasses.dataclass(frozen=True)
class CloseSequence:
    """One close of one store, from CLOSING to CLOSED (built by ``SessionStore.close``).

    Holds the store's parts as they are at the close (a fork replaces the gate).
    """

    path: str
    clock: Callable[[], float]
    gate: Gate[Op]
    writer: Writer
    readers: ReaderPool
    journal: Journal
    router: WriteRouter
    pid: int

    def run(self, timeout: float) -> CloseReport:
        """Run the sequence (the store is CLOSING); the store is CLOSED afterwards.

        Returns:
            What happened, with durations on the store's clock.

        Raises:
            BaseException: only an interrupt, after the ops in hand were journaled (the caller
                then finishes with :meth:`after_failure`).
        """
        errors: list[str] = []
        clock = self.clock
        t0 = clock()
        end = t0 + timeout

        def left() -> float:
            return max(0.0, end - clock())

        self.writer.stop_checkpointer(timeout=min(left(), 0.1))
        abandoned = self.gate.wait_drained(left(), clock=clock)
        if abandoned:
            # Their connections may be mid-statement or waiting on a lock: make them give up.
            self.writer.abandon_waits()
            for conn in self.readers.all():
                with contextlib.suppress(apsw.Error):
                    conn.interrupt()
            errors.append(f"{len(abandoned)} lease(s) abandoned after {timeout:.2f} s")
            # Once an abandoned writer has let go (its op journaled), waits may wait again:
            # the queue is better applied now than journaled for the next open.
            self.writer.resume_waits(timeout=LET_GO_S)
        t1 = clock()

        # Queue and replay share what is left, and at least CLOSE_GRACE_S. Journaling what
        # cannot be applied may wait for the journal's lock until then, and LET_GO_S at least
        # (a peer appending holds it for milliseconds; only a stopped one for longer).
        deadline = clock() + max(left(), CLOSE_GRACE_S)
        out = DrainOutcome(errors, lambda: max(deadline - clock(), LET_GO_S))
        self._drain_queue(deadline, out)
        self.router.count(from_queue=out.applied)
        t2 = clock()

        replayed = self._replay(deadline, errors)
        t3 = clock()

        wal_before = wal_size(self.path)
        checkpoint = None
        if self.writer.is_open:
            try:
                # Busy here is normal when other processes still use the database (the last
                # one to close empties the WAL); it is reported in `checkpoint`, and is not an
                # error of this close.
                checkpoint = self.writer.checkpoint("TRUNCATE", lock_timeout=LET_GO_S)
            except Exception as err:  # close never raises for it; reported
                errors.append(f"final checkpoint: {err}")
        t4 = clock()
        close_connections(self.readers, self.writer, self.pid, errors)
        t5 = clock()
        return CloseReport(
            path=self.path,
            drain_s=t1 - t0,
            queue_s=t2 - t1,
            replay_s=t3 - t2,
            checkpoint_s=t4 - t3,
            close_s=t5 - t4,
            total_s=t5 - t0,
            applied_from_queue=out.applied,
            journaled=self.router.journaled,
            replayed=replayed,
            abandoned_leases=[lease.describe() for lease in abandoned],
            wal_bytes_before=wal_before,
            wal_bytes_after=wal_size(self.path),
            checkpoint=checkpoint,
            errors=errors,
            rejected=out.rejected,
            unrecorded=out.unrecorded,
        )

    def after_failure(self, err: BaseException) -> CloseReport:
        """Finish a close that an interrupt broke: secure the queue, release every connection.

        Returns:
            The report of the broken close; the store is CLOSED.
        """
        out = DrainOutcome([f"close failed: {type(err).__name__}: {err}"], lambda: LET_GO_S)
        out.secure(self.router, self.gate.close_and_take_all(), "close failed")
        self.writer.stop_checkpointer(timeout=0.1)
        close_connections(self.readers, self.writer, self.pid, out.errors)
        return CloseReport(path=self.path, errors=out.errors, unrecorded=out.unrecorded)

    def _replay(self, deadline: float, errors: list[str]) -> int:
        """Replay the journal by ``deadline``; returns how many ops it applied. Never raises."""
        if not (self.journal.size() and self.writer.is_open and self.clock() < deadline):
            return 0
        # Bounded by the same deadline; what is not replayed in time stays in the journal for
        # the next open (op ids make a partly applied replay harmless to redo).
        try:
            rep = self.journal.replay(
                functools.partial(self.writer.apply_batch, deadline=deadline),
                lock_wait_s=max(0.0, deadline - self.clock()),
            )
        except Exception as err:  # the journal stays for the next open
            errors.append(f"journal replay at close: {type(err).__name__}: {err}")
            return 0
        self.router.count(replayed=rep.applied)
        return rep.applied

    def _drain_batch(self, ops: list[Op], out: DrainOutcome, deadline: float) -> list[Op]:
        """Apply queued ops; each ends applied, kept aside, journaled or reported. Never raises.

        Returns:
            The ops not tried because the deadline came first (the caller journals them with
            the rest of the queue).
        """
        if not self.writer.is_open:
            out.secure(self.router, ops, "no connection to apply queued ops")
            return []
        untried: list[Op] = []
        try:
            results = apply_isolated(
                lambda batch: self.writer.apply_batch(batch, deadline=deadline), ops
            )
        except BatchDeadlineError as stop:  # the first len(results) ops committed or were rejected
            results = stop.results
            ops, untried = ops[: len(results)], ops[len(results) :]
        except TimeoutError:
            out.secure(self.router, ops, "writer held by an abandoned lease")
            return []
        except Exception as err:  # ENVIRONMENT_ERRORS: the database cannot take them now
            out.errors.append(f"queued ops not applied: {type(err).__name__}: {err}")
            # Some may have committed before the error; journaling them again is harmless.
            out.secure(self.router, ops, f"could not apply queued ops at close: {err}")
            return []
        rejected = [(op, err) for op, err in zip(ops, results, strict=True) if err is not None]
        out.applied += len(ops) - len(rejected)
        out.rejected += len(rejected)
        if rejected:
            try:
                self.router.keep_aside(rejected)
            except Exception as err:  # the rejected file failed: the journal keeps them
                out.errors.append(f"rejected file: {type(err).__name__}: {err}")
                out.secure(self.router, [op for op, _ in rejected], "rejected at close")
        return untried

    def _drain_queue(self, deadline: float, out: DrainOutcome) -> None:
        """Apply the pending queue in batches and move the store to CLOSED.

        Never raises ``Exception``: every op taken off the queue ends applied, kept aside,
        journaled or in ``out.unrecorded``. A ``BaseException`` (KeyboardInterrupt) secures
        them the same way, then propagates, with the store CLOSED.
        """
        in_hand: list[Op] = []
        # Bounded: a thread that keeps writing refills the queue faster than batches apply
        # (an append costs a microsecond, an applied op tens), so draining "until empty" could
        # run forever. Past the deadline the rest goes to the journal and the store closes.
        try:
            while True:
                # Ops in hand here are what a batch left untried: its deadline came.
                if in_hand or self.clock() >= deadline:
                    in_hand += self.gate.close_and_take_all()
                    if in_hand:
                        out.errors.append(
                            f"{len(in_hand)} queued op(s) journaled at the drain deadline"
                        )
                        out.secure(
                            self.router,
                            in_hand,
                            "close: queue still refilling at the drain deadline",
                        )
                    return
                in_hand = self.gate.take_pending_or_close(BATCH)
                if not in_hand:
                    return  # CLOSED: later writes are journaled
                # What the deadline left untried stays in hand, journaled with the queue.
                in_hand = self._drain_batch(in_hand, out, deadline)
        except BaseException as err:
            # _drain_batch does not raise Exception; this is an interrupt (or a bug): nothing
            # taken off the queue may vanish with it. Ops in hand are kept in `in_hand` until
            # they are applied or recorded, so journaling them again here is at worst a
            # duplicate, which replay makes harmless.
            out.errors.append(f"drain interrupted: {type(err).__name__}: {err}")
            out.secure(self.router, in_hand + self.gate.close_and_take_all(), "close interrupted")
            if not isinstance(err, Exception):
                raise
