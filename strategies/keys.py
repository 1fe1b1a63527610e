"""Key names shared by every strategy.

Each key carries the user in a hash tag (``{u42}``), so that all of one
user's keys hash to one Redis Cluster slot and a per-user script never fails
with CROSSSLOT.
"""


def unread(user: int) -> str:
    """Hash: conversation id -> unread count."""
    return f"unread:{{u{user}}}"


def total(user: int) -> str:
    """String: the user's total unread count (the app badge)."""
    return f"total:{{u{user}}}"


def total_untagged(user: int) -> str:
    """The total without the hash tag (the strategy option `untagged_total`):
    on a cluster it hashes to another slot than the user's hash, so a
    script or a transaction that touches both fails with CROSSSLOT."""
    return f"total:u{user}"


LOCK_PREFIX = "lock:"


def lock(user: int) -> str:
    return f"{LOCK_PREFIX}{{u{user}}}"


def fence(user: int) -> str:
    """Hash: the user's fencing tokens (``next``: the last handed out;
    ``seen``: the highest that has written; ``refused``: writes turned away).
    Under the lock's prefix: a lock's state, as the lock key is."""
    return f"{LOCK_PREFIX}fence:{{u{user}}}"


def unread_ids(user: int) -> str:
    """Hash: unread message id -> conversation id."""
    return f"ids:{{u{user}}}"


def seen(user: int, message: int) -> str:
    """Dedup marker: this message was already counted for this user."""
    return f"seen:{{u{user}}}:{message}"


def sequence(conversation: int) -> str:
    """String: how many messages the conversation has (read positions count
    against it). Conversation keys carry the conversation in a hash tag
    (``{c7}``): its two keys share a slot, as a script needs."""
    return f"seq:{{c{conversation}}}"


def positions(conversation: int) -> str:
    """Hash: member -> the position they have read to."""
    return f"read:{{c{conversation}}}"


def pending(user: int) -> str:
    """Hash: conversation id -> unread messages buffered in Redis, not yet
    folded into the counters (write_behind with ``buffer_in = "redis"``)."""
    return f"pending:{{u{user}}}"


# Set: the users whose buffer in Redis waits for the flusher.
BUFFERED = "buffered"
# Set: users an operation changed since the reconciler's last pass.
CHANGED = "changed"
# Stream: users whose total waits for a recount (async_total's queue).
RECOUNT = "recount"
# The recount stream's consumer group.
RECOUNT_GROUP = "totals"
