"""read_pointer: read positions ("read diffusion"), as group chats keep them.

A conversation keeps how many messages it has (one INCR a message, whatever
its size) and, for each member, the position they have read to; a member's
unread is the difference, and the badge sums it over the user's
conversations, which the application knows (its database holds the
memberships: Discord's read states, Telegram's ``read_inbox_max_id``,
Mattermost's message count at last view). A message moves its sender's
position past it in the same script: one's own message is never unread.
With ``diffuse_above`` > 0, conversations of at most that many members keep
lua's two counters instead, as hybrid systems do; the badge is then their
total plus the positions' sum.
"""
from __future__ import annotations

from typing import Sequence

from sim.commands import Operation, Pipeline, Script
from sim.lua import load_script
from strategies import keys
from strategies.base import counts_from_flat, whole
from strategies.lua import Lua

POST = load_script(__file__, "post_message")
READ_TO_END = load_script(__file__, "read_to_end")


class ReadPointer(Lua):
    name = "read_pointer"
    keeps_total = False
    summary = ("per conversation INCR a message count, per member a read position (Lua); "
               "badge = sum over the user's conversations")
    scripts = (*Lua.scripts, POST, READ_TO_END)
    defaults = {"diffuse_above": 0}
    bounds = {**Lua.bounds, "diffuse_above": (0, 1e9)}
    knows_memberships = True

    def prepare(self, members: Sequence[Sequence[int]], users: int) -> None:
        self.diffused = [len(conversation) > self.diffuse_above for conversation in members]
        self.positions_of: list[list[int]] = [[] for _ in range(users)]
        self.counted = [False] * users   # the user is in a conversation that keeps counters
        for conversation, its_members in enumerate(members):
            for user in its_members:
                if self.diffused[conversation]:
                    self.positions_of[user].append(conversation)
                else:
                    self.counted[user] = True

    def deliver(self, message: int, conversation: int, sender: int, recipients: Sequence[int]) -> Operation:
        if not self.diffused[conversation]:
            return (yield from super().deliver(message, conversation, sender, recipients))
        yield Script(POST, (keys.sequence(conversation), keys.positions(conversation)), (str(sender),))

    def open_conversation(self, user: int, conversation: int) -> Operation:
        if not self.diffused[conversation]:
            return (yield from super().open_conversation(user, conversation))
        count = yield Script(READ_TO_END, (keys.sequence(conversation), keys.positions(conversation)), (str(user),))
        return int(count)

    def _unread_requests(self, user: int) -> list[tuple]:
        """Each diffused conversation's message count and the user's position."""
        member = str(user)
        requests = []
        for conversation in self.positions_of[user]:
            requests.append(("GET", keys.sequence(conversation)))
            requests.append(("HGET", keys.positions(conversation), member))
        return requests

    def fetch_badge(self, user: int) -> Operation:
        requests = self._unread_requests(user)
        if self.counted[user] or not requests:
            requests.append(("GET", self.total_key(user)))
        # An error reply inside (READONLY...) fails the operation: what it sums then is never shown.
        replies = [whole(reply or 0) or 0 for reply in (yield Pipeline(tuple(requests)))]
        pairs = len(self.positions_of[user])
        total = replies[-1] if len(replies) > 2 * pairs else 0
        return total + sum(replies[2 * i] - replies[2 * i + 1] for i in range(pairs))

    def counters(self, user: int) -> Operation:
        """The counters' conversations as lua's, and each diffused one's
        unread as the strategy reads it; the total: the counters' total
        plus the diffused ones' unread (so that a user is inconsistent only
        where the counters are)."""
        requests = self._unread_requests(user)
        flat, total, *replies = yield Pipeline((("HGETALL", keys.unread(user)), ("GET", self.total_key(user)),
                                                *requests))
        counts, bad = counts_from_flat(flat)
        value = whole(total or 0)
        diffused = 0
        for i, conversation in enumerate(self.positions_of[user]):
            count, position = whole(replies[2 * i] or 0), whole(replies[2 * i + 1] or 0)
            if count is None or position is None:
                bad += 1
                continue
            if count != position:
                counts[conversation] = count - position
                diffused += count - position
        return counts, (value or 0) + diffused, bad + (value is None)
