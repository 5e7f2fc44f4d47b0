"""How batches form: every rule of the worker's batching in one pure piece (no Redis, no model).

- :class:`BatchPolicy`: how many inputs a batch holds, how long it waits for company, which job
  is too large to share a model call and runs in chunks, and how large a running bulk job's
  chunks of its own are.
- :func:`forward_chunks`: how a batch goes through the model: one pass, or passes of similar
  lengths under the item count and the token budget (``max_batch_tokens``).
- :class:`LanePolicy`: which lane (interactive or bulk) the next batch comes from.
- :class:`BulkPace`: how many inputs of a running bulk job ride along each interactive batch.
- The lingering times: how long a worker keeps looking for the next interactive request.

The worker (``workers.batching``) and the lanes' dequeue (``workers.lanes``) apply them; the
gateway's coalescing (``gateway.coalesce.take``) groups requests by the same ``max_batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from contract.jobs import BULK, INTERACTIVE

LINGER_S = 0.005
"""After an interactive batch, how long a worker keeps looking for the next interactive request
before it takes bulk work: a client that sends its next request as soon as it has its answer
(a few ms later) finds the worker free instead of behind a bulk chunk."""

BULK_LINGER_S = 0.025
"""The same wait after an interactive batch served while a bulk job runs: there, not waiting
long enough costs a request a whole model call of the job's own. Clients that send their next
request as soon as they have an answer (a few ms through the gateway) find the worker free; a
bulk job loses at most this much per interactive batch."""

SHARED_FOR_S = 1.0
"""Interactive work seen this recently makes a bulk job's chunks of its own smaller."""

SHARED_CHUNK_DIVISOR = 6
"""A bulk job's chunk of its own while interactive work comes in but none waits: at least this
fraction of ``max_batch_size`` (a request arriving meanwhile waits at most about one such chunk;
the job's share is kept by the inputs that ride along interactive batches)."""


@dataclass(frozen=True)
class BatchPolicy:
    """How large a batch may grow and how long the first job may wait for company."""

    max_size: int = 32
    max_delay_ms: float = 0.0
    timeout_s: float = 30.0

    def delay_s(self, last_batch_items: int) -> float:
        """How long a batch waits for company: only under load (the last batch had some), so
        a request arriving alone after a quiet spell runs at once and the delay never costs a
        lone caller anything."""
        return self.max_delay_ms / 1000 if last_batch_items > 1 else 0.0

    def is_large(self, items: int) -> bool:
        """A job larger than a batch runs alone, a chunk at a time."""
        return items > self.max_size

    def own_chunk(self, owed: int, company: bool, interactive_recent: bool) -> int:
        """Inputs of a running bulk job to compute next: what it is owed when it rides along
        interactive work (``company``); a small chunk of its own while interactive work came
        recently (a request arriving meanwhile waits at most about one such chunk); a whole
        batch otherwise."""
        if company:
            return owed
        if interactive_recent:
            return max(owed, self.max_size // SHARED_CHUNK_DIVISOR, 1)
        return self.max_size


CPU_TOKEN_BUDGET = 1024
"""``max_batch_tokens`` on CPU when models.yaml leaves it unset. Passes of about a thousand
tokens cost no more per token on CPU than larger ones, and less for long inputs (their attention
stays in cache); batches of 32 short texts (~700 tokens) still go in one pass. Measured with
``python -m bench.token_budget`` (README, "Token budget"): mixed queries and passages 3.9x
(MiniLM) and 3.7x (BERT-base-sized) the item count alone, 32 passages 1.35x / 1.28x."""

GPU_TOKEN_BUDGET = 16384
"""``max_batch_tokens`` on a GPU when unset: TEI's default. A GPU computes a large pass at
little more cost than a small one, so only padding waste this large is worth a second pass."""


def token_budget(configured: int | None, device: str) -> int | None:
    """The token budget of a forward pass: models.yaml's, else the device's default; None
    for 0 (no budget: the item count alone)."""
    if configured is None:
        return CPU_TOKEN_BUDGET if device == "cpu" else GPU_TOKEN_BUDGET
    return configured or None


def forward_chunks(
    lengths: Sequence[int], max_items: int, max_tokens: int | None = None
) -> list[list[int]]:
    """The forward passes a batch of inputs with these token ``lengths`` goes through, as lists
    of indices. One pass, in order, when the batch fits: at most ``max_items`` inputs and, with
    a ``max_tokens`` budget, at most that many tokens as the model computes them, padded (the
    inputs times the longest). Otherwise the inputs sorted by length, shortest first, in passes
    each as large as both limits allow; an input longer than the budget goes alone. Padding is
    compute spent on nothing: one long passage in a pass of short queries makes every row as
    long as the passage (what TEI's ``max_batch_tokens`` bounds, there without padding)."""

    def fits(count: int, longest: int) -> bool:
        return count <= max_items and (max_tokens is None or count * longest <= max_tokens)

    if not lengths:
        return []
    if fits(len(lengths), max(lengths)):
        return [list(range(len(lengths)))]
    chunks: list[list[int]] = [[]]
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if chunks[-1] and not fits(len(chunks[-1]) + 1, lengths[i]):
            chunks.append([])
        chunks[-1].append(i)
    return chunks


def fair_share(queued: int, taken: int, idle_workers: int) -> int:
    """How many more of the ``queued`` jobs a worker gathering a batch (``taken`` already
    in it) takes, so that the other idle workers of its model get their part: an even split
    of the work in sight among the idle ones (itself included). A worker that takes all it can
    while a second one idles makes one batch of everything and leaves a core idle; two even
    halves keep both busy (README, "Balanced batches"; the gateway's coalescing splits a burst
    by the same reasoning, ``gateway.coalesce.group_limit``)."""
    share = -(-(queued + taken) // max(1, idle_workers))  # ceil
    return max(0, min(queued, share - taken))


@dataclass
class LanePolicy:
    """Which lane comes first for the next batch: interactive, except for a ``bulk_share`` of
    the batches (a credit that grows by the share per batch and is spent a whole batch at a
    time), so while both lanes have work, bulk gets that share and never less."""

    bulk_share: float
    credit: float = 0.0

    def next_lane(self) -> str:
        self.credit += self.bulk_share
        if self.credit >= 1.0 - 1e-9:  # 0.1 added ten times is 0.999...9
            self.credit -= 1.0
            return BULK
        return INTERACTIVE


@dataclass
class BulkPace:
    """How many inputs of a running bulk job ride along each interactive batch, so that the job
    keeps ``share`` of the throughput it has alone however busy the interactive lane is.

    While the job runs, credit accrues at ``share`` x the rate a bulk job has alone (inputs per
    second, learnt from its full chunks of its own, each timed with its saving; before any, from
    the worker's model calls) and is spent in whole inputs. Riding along costs
    the interactive batch only the inputs' marginal compute, not a model call of their own: a
    request that finds the worker busy waits one ordinary batch, a little larger."""

    share: float
    max_size: int
    rate: float = 0.0
    """Inputs per second: of a bulk job's recent full chunks of its own; before any, of the
    worker's calls of at least half a batch; before any, the best of the smaller ones."""
    learnt: int = 0
    """Where :attr:`rate` comes from: 2 bulk chunks alone, 1 calls of half a batch or more,
    0 smaller calls."""
    credit: float = 0.0
    at: float | None = None

    def observe(self, inputs: int, seconds: float, alone: bool = False) -> None:
        """One model call (``alone``: a bulk job's whole step of a full chunk of its own, the
        call and the chunk's saving): its inputs and duration."""
        if inputs <= 0 or seconds <= 0:
            return
        rate = inputs / seconds
        source = 2 if alone else 1 if 2 * inputs >= self.max_size else 0
        if source < self.learnt:
            return
        if source == 0:
            self.rate = max(self.rate, rate)
        elif source > self.learnt:
            self.rate = rate
        else:  # the recent peak: a faster step raises it, a slower one lowers it by a tenth
            # of the gap, so a noisy neighbour's slowdown never shrinks what bulk is owed
            self.rate = max(rate, 0.9 * self.rate + 0.1 * rate)
        self.learnt = source

    def start(self) -> None:
        """A bulk job begins: no credit carried over from an earlier one, or from idle time."""
        self.credit, self.at = 0.0, None

    def owed(self, now: float) -> int:
        """Whole inputs the job is owed at ``now`` (``time.monotonic()``); at least one while
        the rate is still unknown, and never the whole batch (one slot stays interactive)."""
        if self.at is not None:
            self.credit += self.share * self.rate * max(0.0, now - self.at)
            self.credit = min(self.credit, float(self.max_size))
        self.at = now
        owed = int(self.credit) if self.rate > 0 else 1
        return max(0, min(owed, self.max_size - 1))

    def spend(self, inputs: int) -> None:
        self.credit = max(0.0, self.credit - inputs)
