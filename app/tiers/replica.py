"""The replica tier: replicas of the key's own slot, read over READONLY connections.

Replicas are ranked by the topology watcher (healthy link first, then lag, then latency) and
tried in that order while the deadline allows, at most two. Each answer carries how far that
replica may be behind its primary; the router decides whether that is within policy.
"""

from __future__ import annotations

import math

from redis.exceptions import ResponseError

from app.cluster.errors import reply_error
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Address, format_address
from app.cluster.topology import TopologyWatcher, parse_info
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
        # While the slot's primary is not believed (lost, restarted, promoted), a replica may
        # have resynced from it onto older data: its position is asked with the read.
        check = not self.slots.provenance.trusted(shard.primary)
        commands: tuple[tuple[bytes, ...], ...] = ((b"GET", ref.rkey),)
        if check:
            commands += ((b"INFO", b"replication"),)
        for address in candidates:
            try:
                replies = await self.slots.call_on(
                    address, *commands, readonly=True, deadline=deadline, route="replica",
                    bulk=size is not None,
                )  # fmt: skip
            except TierError as exc:
                error = exc
                continue
            raw = replies[0]
            if isinstance(raw, ResponseError):
                error = reply_error(raw, route=f"replica@{format_address(address)}")
                continue
            self.large.saw(ref.rkey, len(raw) if isinstance(raw, bytes) else 0)
            behind_s = self.watcher.behind_s(address)
            if check and not self._still_believed(address, replies[1]):
                behind_s = math.inf
            return parse_reply(raw, ref, behind_s=behind_s)
        raise error if error is not None else TierUnavailableError("no replica answered")

    def _still_believed(self, address: Address, reply: object) -> bool:
        if not isinstance(reply, bytes):
            return False
        info = parse_info(reply.decode("utf-8", "replace"))
        offset = info.get("slave_repl_offset")
        return self.watcher.believed(
            address, info.get("master_replid"), int(offset) if offset and offset.isdigit() else None
        )
