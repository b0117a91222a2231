"""The replica tier: replicas of the key's own slot, read over READONLY connections.

Replicas are ranked by the topology watcher (healthy link first, then lag, then latency) and
tried in that order while the deadline allows, at most two. Each answer carries how far that
replica may be behind its primary; the router decides whether that is within policy.
"""

from __future__ import annotations

from app.cluster.slot_router import SlotRouter
from app.cluster.topology import TopologyWatcher
from app.errors import TierError, TierUnavailableError
from app.tiers.base import Copy, KeyRef
from app.tiers.primary import parse_reply
from app.tiers.sizes import LargeValues, transfer_s

MAX_REPLICAS_TRIED = 2


class ReplicaTier:
    name = "replica"

    def __init__(
        self, slots: SlotRouter, watcher: TopologyWatcher, *, large: LargeValues | None = None
    ) -> None:
        self.slots = slots
        self.watcher = watcher
        self.large = large or LargeValues()

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy:
        slot, shard = self.slots.shard_for(ref.rkey)
        if shard is None:
            raise TierUnavailableError(f"slot {slot} has no known owner", route="replica")
        candidates = self.watcher.rank_replicas(shard.replicas)[:MAX_REPLICAS_TRIED]
        if not candidates:
            raise TierUnavailableError(f"slot {slot} has no usable replica", route="replica")
        error: TierError | None = None
        size = self.large.size(ref.rkey)
        if size is not None:
            deadline += transfer_s(size)
        for address in candidates:
            try:
                raw = await self.slots.execute_on(
                    address, b"GET", ref.rkey, readonly=True, deadline=deadline, route="replica",
                    bulk=size is not None,
                )  # fmt: skip
            except TierError as exc:
                error = exc
                continue
            self.large.saw(ref.rkey, len(raw) if isinstance(raw, bytes) else 0)
            return parse_reply(raw, ref, behind_s=self.watcher.behind_s(address))
        raise error if error is not None else TierUnavailableError("no replica answered")
