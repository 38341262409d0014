"""Coalescing concurrent single transfers into independent batches.

Each transfer is one round trip, one lock acquisition and one commit; under
load those, not the bookkeeping, are the cost, and on contended accounts the
lock is held through the commit. A worker process therefore gathers the
transfers its concurrent activities submit while a batch is in flight and
sends them as the next batch in independent mode: every item is checked and
recorded on its own, exactly as if sent alone, in arrival order, and every
caller gets only its own outcome. This is how TigerBeetle's clients batch.

A caller waits at most for the batch in flight plus its own, so latency stays
near one round trip when idle and throughput grows with load.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from activities.ledger.errors import IdempotencyConflict, UnrepresentableValue
from activities.ledger.store import Ledger
from schemas.ledger import BATCH_SIZE_MAX, Rejection, TransferOutcome, TransferRequest

# Items per coalesced batch: large enough to amortize a commit over many
# transfers, small enough that one batch's locks are held briefly.
COALESCED_BATCH_SIZE_MAX = 512
# Batches in flight at once per process; more only queue behind each other's
# row locks, fewer leave the database idle during a round trip.
COALESCED_IN_FLIGHT_MAX = 2

assert COALESCED_BATCH_SIZE_MAX <= BATCH_SIZE_MAX


@dataclass
class _Waiting:
    request: TransferRequest
    future: asyncio.Future[TransferOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TransferCoalescer:
    """`transfer()` like Ledger.transfer, with concurrent calls sent as batches."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        batch_size_max: int = COALESCED_BATCH_SIZE_MAX,
        in_flight_max: int = COALESCED_IN_FLIGHT_MAX,
    ) -> None:
        assert 1 <= batch_size_max <= BATCH_SIZE_MAX
        assert in_flight_max >= 1
        self._ledger = ledger
        self._batch_size_max = batch_size_max
        self._in_flight_max = in_flight_max
        self._queue: list[_Waiting] = []
        self._in_flight = 0
        # The event loop keeps only weak references to tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    async def transfer(self, request: TransferRequest) -> TransferOutcome:
        waiting = _Waiting(request)
        self._queue.append(waiting)
        if self._in_flight < self._in_flight_max:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        outcome = await waiting.future
        if outcome.rejection is Rejection.IDEMPOTENCY_CONFLICT:
            raise IdempotencyConflict(outcome.detail, request.key)
        return outcome

    def _take_batch(self) -> list[_Waiting]:
        """The oldest waiting requests, at most one per key (a repeat waits its turn)."""
        batch: list[_Waiting] = []
        keys: set[str] = set()
        rest: list[_Waiting] = []
        for waiting in self._queue:
            if len(batch) < self._batch_size_max and waiting.request.key not in keys:
                keys.add(waiting.request.key)
                batch.append(waiting)
            else:
                rest.append(waiting)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._settle(self._take_batch())
        finally:
            self._in_flight -= 1

    async def _settle(self, batch: list[_Waiting]) -> None:
        """Submit the batch and give each caller its outcome or the batch's error."""
        try:
            outcomes = await self._ledger.submit(
                [waiting.request for waiting in batch], atomic=False
            )
        except UnrepresentableValue as error:
            if len(batch) == 1:
                _fail(batch, error)
                return
            # A value of one request cannot be represented, and the call did
            # nothing: each request goes again alone, so only its own caller
            # is refused and the others are not retried behind it for ever.
            for waiting in batch:
                await self._settle([waiting])
            return
        except BaseException as error:  # noqa: BLE001 - handed to every caller
            _fail(batch, error)
            if not isinstance(error, Exception):
                raise
            return
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(outcome)


def _fail(batch: list[_Waiting], error: BaseException) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(error)
