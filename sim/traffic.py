"""Synthetic chat traffic: a seeded, saved, replayable trace.

The trace is generated once and drives every strategy of a run, so that
strategies are compared on identical work. It holds:

- the conversations: 1:1 pairs and groups whose sizes follow a capped Pareto
  law (heavy-tailed: most groups are small, a few are huge), stored as CSR
  arrays (``conv_offsets``, ``conv_members``);
- the operations in time order: message deliveries (Poisson arrivals, senders
  drawn by Zipf activity, each conversation's share of the messages
  damped by size**-group_weight_exponent, so a big group is not flooded by
  all its members), conversation reads (a recipient opens the conversation after an
  exponential delay, or never) and badge fetches (a push reads the
  recipient's total), and logins (a user opens the app, which shows the badge:
  ``logins_per_s``, users drawn uniformly).

``dm_partner_zipf`` > 0 draws 1:1 partners by a Zipf law of their own, so
that a few heavy users are in many conversations (the badge of a strategy
that sums over them grows with them); 0 draws them all alike.
"""
from __future__ import annotations

import hashlib
import json
import math
import stat
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

DELIVER, READ, BADGE, LOGIN = 0, 1, 2, 3
KIND_NAMES = ("deliver", "open_conversation", "fetch_badge", "login")
TRACE_FORMAT = 1


@dataclass(frozen=True)
class TrafficConfig:
    users: int = 1000
    messages: int = 10_000
    message_rate: float = 1000.0          # messages per second, Poisson
    dm_per_user: float = 3.0              # mean 1:1 conversations per user
    groups: int = 50
    group_size_min: int = 3
    group_size_alpha: float = 1.3         # Pareto tail index of group sizes
    max_group_size: int = 200
    include_max_group: bool = False       # force one group of max_group_size
    activity_zipf: float = 1.1            # Zipf exponent of sender activity
    group_weight_exponent: float = 1.0    # a conversation's pick weight is size**-this
    read_probability: float = 0.7         # chance a delivery leads to a read
    read_delay_mean_s: float = 2.0
    badge_probability: float = 0.3        # chance a delivery pushes a badge fetch
    badge_delay_s: float = 0.005
    dm_partner_zipf: float = 0.0          # Zipf exponent of 1:1 partners (0: all alike; above: heavy users)
    logins_per_s: float = 0.0             # logins (the app opened: its badge shown), Poisson over the trace
    # The message rate's profile (1 by default: a flat Poisson rate): a daily
    # cycle, rate x (1 + daily_amplitude x cos(2 pi (t - peak_at_s) / day_s)),
    # and bursts, burst_factor x the rate for burst_s every burst_every_s
    # (0: none), so that drawn traffic can match what `trace stats` shows.
    daily_amplitude: float = 0.0
    day_s: float = 86_400.0
    peak_at_s: float = 0.0
    burst_every_s: float = 0.0
    burst_s: float = 1.0
    burst_factor: float = 5.0
    # A trace to replay instead of drawing one (`countdrift trace import` of an event log): the keys above unused.
    file: str = ""


@dataclass
class Trace:
    config: TrafficConfig
    seed: int
    conv_offsets: np.ndarray   # int64, len conversations + 1
    conv_members: np.ndarray   # int32
    t: np.ndarray              # float64, intended start of each operation, sorted
    kind: np.ndarray           # int8: DELIVER, READ, BADGE, LOGIN
    user: np.ndarray           # int32: sender, reader, badge owner, or who logged in
    conv: np.ndarray           # int32: conversation (-1 for a badge fetch or a login)
    message: np.ndarray        # int32: message id for a delivery, else -1
    source: str = ""           # the event log it was imported from ("": drawn from its config and seed)

    @property
    def users(self) -> int:
        return self.config.users

    @property
    def conversations(self) -> int:
        return len(self.conv_offsets) - 1

    def deliveries(self) -> int:
        """How many (message, recipient) pairs the trace fans out to."""
        sizes = np.diff(self.conv_offsets)
        return int((sizes[self.conv[self.kind == DELIVER]] - 1).sum())

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for array in self._arrays().values():
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def work(self) -> "Work":
        return Work(len(self.conv_members), self.deliveries(), len(self.t))

    def summary(self) -> dict:
        sizes = np.diff(self.conv_offsets)
        return {
            "users": self.users,
            "conversations": self.conversations,
            "groups": int((sizes > 2).sum()),
            "largest_group": int(sizes.max()) if len(sizes) else 0,
            "messages": int((self.kind == DELIVER).sum()),
            "deliveries": self.deliveries(),
            "reads": int((self.kind == READ).sum()),
            "badge_fetches": int((self.kind == BADGE).sum()),
            "logins": int((self.kind == LOGIN).sum()),
            "operations": len(self.t),
            "span_s": float(self.t[-1]) if len(self.t) else 0.0,
            "sha256": self.sha256(),
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def save(self, path: Path) -> None:
        """Write the trace atomically (a failure leaves no partial file), with
        the checksum of its arrays in its metadata."""
        from sim.report.output import write_file

        meta = json.dumps({"format": TRACE_FORMAT, "seed": self.seed, "config": asdict(self.config),
                           "sha256": self.sha256(), "source": self.source})
        write_file(path, lambda out: np.savez_compressed(out, meta=np.array(meta), **self._arrays()), binary=True)

    @classmethod
    def load(cls, path: Path) -> "Trace":
        """A trace countdrift saved, checked: its metadata, its arrays' types
        and lengths, the checksum of its arrays, and every id in range
        (TraceError names the file and what is wrong)."""
        try:
            if not stat.S_ISREG(Path(path).stat().st_mode):
                raise TraceError(f"{path}: not a regular file; a trace is a .npz file `countdrift trace` writes")
            with np.load(path, allow_pickle=False) as data:
                if "meta" not in data.files:
                    raise TraceError(f"{path}: not a trace countdrift wrote (no metadata)")
                unpacked = sum(info.file_size for info in data.zip.infolist())
                if unpacked > MAX_TRACE_BYTES:
                    raise TraceError(f"{path}: its arrays unpack to {unpacked:,} bytes; a trace holds at most "
                                     f"{MAX_TRACE_BYTES:,}")
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except TraceError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RecursionError) as error:
            raise TraceError(f"{path}: not a trace countdrift wrote ({type(error).__name__}: "
                             f"{str(error)[:200]})") from None
        if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise TraceError(f"{path}: trace format {found!r} is not {TRACE_FORMAT}")
        try:
            config = TrafficConfig(**meta["config"])
            seed = meta["seed"]
        except (KeyError, TypeError) as error:
            raise TraceError(f"{path}: the trace's metadata lacks its traffic or seed ({error})") from None
        for field in fields(TrafficConfig):
            value = getattr(config, field.name)
            if type(value) is not type(field.default) or (isinstance(value, float) and not math.isfinite(value)):
                raise TraceError(f"{path}: the trace's traffic.{field.name} is {value!r}, not "
                                 f"{type(field.default).__name__}")
        if config.users < 2:
            raise TraceError(f"{path}: the trace's traffic has {config.users} users")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
            raise TraceError(f"{path}: the trace's seed {seed!r} is not a seed")
        names = set(ARRAYS)
        if set(arrays) != names:
            raise TraceError(f"{path}: the trace holds arrays {sorted(arrays)}, not {sorted(names)}")
        for name, kind in ARRAYS.items():
            if arrays[name].ndim != 1 or arrays[name].dtype != kind:
                raise TraceError(f"{path}: array {name} is {arrays[name].dtype} of {arrays[name].ndim} "
                                 f"dimension(s), not a row of {np.dtype(kind)}")
        trace = cls(config=config, seed=seed, **arrays, source=str(meta.get("source", "")))
        if meta.get("sha256") != trace.sha256():
            raise TraceError(f"{path}: its arrays do not match the checksum in its metadata (edited or damaged); "
                             f"make it again with `countdrift trace`")
        trace.check(str(path))
        return trace

    def check(self, where: str) -> None:
        """Refuse a trace whose arrays cannot describe traffic (TraceError naming the array)."""
        def bad(what: str) -> TraceError:
            return TraceError(f"{where}: {what}")

        offsets, members = self.conv_offsets, self.conv_members
        if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(members) or np.any(np.diff(offsets) < 2):
            raise bad("conv_offsets must start at 0, end at len(conv_members), and give each conversation "
                      "2 members or more")
        if len(members) and (members.min() < 0 or members.max() >= self.users):
            raise bad(f"conv_members must be users from 0 to {self.users - 1}")
        n = len(self.t)
        if any(len(array) != n for array in (self.kind, self.user, self.conv, self.message)):
            raise bad("t, kind, user, conv and message must have one entry per operation")
        if n == 0:
            raise bad("no operation")
        if not np.all(np.isfinite(self.t)) or self.t[0] < 0 or np.any(np.diff(self.t) < 0):
            raise bad("t must be finite, from 0 on, in time order")
        if np.any((self.kind < DELIVER) | (self.kind > LOGIN)):
            raise bad(f"kind must be {DELIVER} (deliver), {READ} (open), {BADGE} (badge) or {LOGIN} (login)")
        if self.user.min() < 0 or self.user.max() >= self.users:
            raise bad(f"user must be from 0 to {self.users - 1}")
        badge = (self.kind == BADGE) | (self.kind == LOGIN)
        others = self.conv[~badge]
        if np.any(self.conv[badge] != -1) or np.any((others < 0) | (others >= self.conversations)):
            raise bad(f"conv must be -1 for a badge fetch or a login, else from 0 to {self.conversations - 1}")
        deliver = self.kind == DELIVER
        if np.any(self.message[~deliver] != -1) or not np.array_equal(self.message[deliver],
                                                                       np.arange(int(deliver.sum()))):
            raise bad("message must number the deliveries 0, 1, 2... in order, and be -1 for the rest")
        conv_of_slot = np.repeat(np.arange(self.conversations, dtype=np.int64), np.diff(offsets))
        memberships = np.sort(conv_of_slot * self.users + members)
        asked = self.conv[~badge].astype(np.int64) * self.users + self.user[~badge]
        found = np.searchsorted(memberships, asked)
        member = (found < len(memberships)) & (memberships[np.minimum(found, len(memberships) - 1)] == asked)
        if not member.all():
            first = int(np.flatnonzero(~badge)[np.flatnonzero(~member)[0]])
            raise bad(f"operation {first}: user {int(self.user[first])} is not a member of conversation "
                      f"{int(self.conv[first])}")


MAX_TRACE_BYTES = 8 * 2 ** 30   # 200 M operations' arrays; what a run of MAX_DELIVERIES holds


class TraceError(ValueError):
    """A trace file that is not one countdrift can replay."""


ARRAYS = {"conv_offsets": np.int64, "conv_members": np.int32, "t": np.float64, "kind": np.int8,
          "user": np.int32, "conv": np.int32, "message": np.int32}


def is_trace(path: Path) -> bool:
    """Whether a file is a trace countdrift wrote (its metadata, not its arrays, checked)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "meta" in data.files and json.loads(str(data["meta"])).get("format") is not None
    except Exception:   # noqa: BLE001 - whatever else the file is, it is not ours
        return False


def expected_memberships(config: TrafficConfig) -> float:
    """About how many (user, conversation) memberships a trace of this
    traffic holds: its 1:1 pairs, and its groups at the mean of their capped
    Pareto size, E[min(X, cap)] = min + integral of (min/x)^alpha from min to
    cap (the floor of each draw ignored: a little over), plus the forced
    largest group. (A trace from a file is sized by its arrays, in ``work``.)"""
    if config.file:
        return 0.0
    low, alpha = config.group_size_min, config.group_size_alpha
    cap = min(config.max_group_size, config.users)
    if cap <= low:
        mean = float(cap)
    elif alpha == 1.0:
        mean = low + low * math.log(cap / low)
    else:
        mean = low + low ** alpha * (cap ** (1.0 - alpha) - low ** (1.0 - alpha)) / (1.0 - alpha)
    largest = cap if config.include_max_group and config.groups else 0
    return config.users * config.dm_per_user + config.groups * mean + largest


@dataclass(frozen=True)
class Work:
    """How much a trace holds, known before its reads and badges are drawn."""

    memberships: int
    deliveries: int          # (message, recipient) pairs
    operations: int          # at most: a delivery may add a read and a badge fetch, each with its probability


def work(config: TrafficConfig, seed: int) -> Work:
    """The work a trace of this traffic and seed holds (drawing its
    conversations and messages: fast, and bounded by the memberships)."""
    if config.file:
        return Trace.load(Path(config.file)).work()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7261]))
    offsets, members = _conversations(config, rng)
    _, conv = _messages(config, rng, offsets, members)
    return _work(config, offsets, conv)


def _work(config: TrafficConfig, offsets: np.ndarray, conv: np.ndarray) -> Work:
    deliveries = int((np.diff(offsets)[conv] - 1).sum())
    extra = config.read_probability + config.badge_probability
    # Logins: a Poisson count over the messages' span, bounded well above its mean.
    span = config.messages / config.message_rate
    logins = math.ceil(2 * config.logins_per_s * span) + 10 if config.logins_per_s else 0
    return Work(int(offsets[-1]), deliveries, config.messages + math.ceil(deliveries * extra) + logins)


class TooMuchWork(ValueError):
    """Traffic that no machine runs: more deliveries than MAX_DELIVERIES."""


MAX_DELIVERIES = 200_000_000


def generate(config: TrafficConfig, seed: int) -> Trace:
    """The trace of this traffic and seed: drawn, or the file it names (whatever the seed)."""
    if config.file:
        return Trace.load(Path(config.file))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7261]))
    offsets, members = _conversations(config, rng)
    sender, conv = _messages(config, rng, offsets, members)
    drawn = _work(config, offsets, conv)
    if drawn.deliveries > MAX_DELIVERIES:
        raise TooMuchWork(f"traffic.messages x the recipients of each message give {drawn.deliveries:,} deliveries; "
                          f"at most {MAX_DELIVERIES:,}")
    msg_t = _message_times(config, rng, len(sender))
    read_t, read_user, read_conv, badge_t, badge_user = _reads_and_badges(
        config, rng, offsets, members, msg_t, sender, conv)

    login_t, login_user = _logins(config, rng, float(msg_t[-1]) if len(msg_t) else 0.0)

    n_msg, n_read, n_badge, n_login = len(msg_t), len(read_t), len(badge_t), len(login_t)
    t = np.concatenate([msg_t, read_t, badge_t, login_t])
    order = np.argsort(t, kind="stable")
    kind = np.concatenate([np.full(n_msg, DELIVER, np.int8), np.full(n_read, READ, np.int8),
                           np.full(n_badge, BADGE, np.int8), np.full(n_login, LOGIN, np.int8)])
    user = np.concatenate([sender, read_user, badge_user, login_user]).astype(np.int32)
    conv_all = np.concatenate([conv, read_conv, np.full(n_badge + n_login, -1)]).astype(np.int32)
    message = np.concatenate([np.arange(n_msg), np.full(n_read + n_badge + n_login, -1)]).astype(np.int32)
    return Trace(config, seed, offsets, members, t[order], kind[order], user[order],
                 conv_all[order], message[order])


def _conversations(config: TrafficConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = config.users
    # 1:1 conversations: distinct unordered pairs (drawn until there are
    # enough, or as many as the users can form), partners alike or by Zipf.
    n_dm = min(int(round(n * config.dm_per_user / 2)), n * (n - 1) // 2)
    pairs = np.zeros(0, np.int64)
    partner = None
    if config.dm_partner_zipf:
        weight = (rng.permutation(n) + 1).astype(np.float64) ** -config.dm_partner_zipf
        partner = weight / weight.sum()
    while len(pairs) < n_dm:
        if partner is None:
            a = rng.integers(0, n, n_dm * 2)
            b = rng.integers(0, n, n_dm * 2)
        else:
            a = rng.choice(n, n_dm * 2, p=partner)
            b = rng.integers(0, n, n_dm * 2)
        keep = a != b
        low, high = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
        pairs = np.union1d(pairs, low.astype(np.int64) * n + high)
    pairs = rng.permutation(pairs[:n_dm])
    dm_members = np.stack([pairs // n, pairs % n], axis=1).ravel()

    # Groups: capped Pareto sizes, members drawn without replacement.
    cap = min(config.max_group_size, n)
    sizes = np.floor(config.group_size_min * (1.0 - rng.random(config.groups)) ** (-1.0 / config.group_size_alpha))
    sizes = np.clip(sizes, config.group_size_min, cap).astype(np.int64)
    if config.include_max_group and config.groups:
        sizes[0] = cap
    group_members = [rng.choice(n, size=int(size), replace=False) for size in sizes]

    all_sizes = np.concatenate([np.full(len(pairs), 2, np.int64), sizes])
    offsets = np.zeros(len(all_sizes) + 1, np.int64)
    np.cumsum(all_sizes, out=offsets[1:])
    members = np.concatenate([dm_members] + group_members).astype(np.int32)
    return offsets, members


def _messages(config: TrafficConfig, rng: np.random.Generator, offsets: np.ndarray,
              members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw each message's conversation, then its sender among the members.

    Users have Zipf activity. A conversation's share of the messages is its
    members' summed activity times size**-group_weight_exponent (with 1, a
    group is as busy as its average member: big groups are not flooded), and
    the sender is a member drawn by activity.
    """
    ranks = rng.permutation(config.users) + 1
    activity = ranks.astype(np.float64) ** -config.activity_zipf
    sizes = np.diff(offsets)
    slot_activity = activity[members]
    weight = np.add.reduceat(slot_activity, offsets[:-1]) * sizes.astype(np.float64) ** -config.group_weight_exponent
    conv = rng.choice(len(sizes), size=config.messages, p=weight / weight.sum())

    cum = np.cumsum(slot_activity)
    before = np.concatenate([[0.0], cum])
    start, end = offsets[conv], offsets[conv + 1]
    target = before[start] + rng.random(config.messages) * (before[end] - before[start])
    slot = np.clip(np.searchsorted(cum, target, side="right"), start, end - 1)
    return members[slot].astype(np.int32), conv.astype(np.int32)


def _message_times(config: TrafficConfig, rng: np.random.Generator, count: int) -> np.ndarray:
    """Poisson arrivals at the message rate, shaped by the profile: unit-rate
    arrivals mapped through the inverse of the cumulative rate (the same
    draws as a flat rate, which keeps every flat trace as it was)."""
    if not config.daily_amplitude and not config.burst_every_s:
        return np.cumsum(rng.exponential(1.0 / config.message_rate, count))
    unit = np.cumsum(rng.exponential(1.0, count))
    lowest = config.message_rate * (1.0 - config.daily_amplitude)
    horizon = (unit[-1] if count else 0.0) / lowest * 1.01 + 1.0
    finest = min(config.day_s / 200.0, config.burst_s / 20.0 if config.burst_every_s else np.inf)
    grid = np.linspace(0.0, horizon, int(min(max(horizon / finest, 1000), 5_000_000)) + 1)
    middle = (grid[:-1] + grid[1:]) / 2.0
    rate = rate_profile(config, middle) * config.message_rate
    cumulative = np.concatenate([[0.0], np.cumsum(rate * np.diff(grid))])
    return np.interp(unit, cumulative, grid)


def rate_profile(config: TrafficConfig, t: np.ndarray) -> np.ndarray:
    """The message rate's multiplier at times ``t`` (1: the flat rate)."""
    profile = 1.0 + config.daily_amplitude * np.cos(2.0 * np.pi * (t - config.peak_at_s) / config.day_s)
    if config.burst_every_s:
        profile = profile * np.where(np.mod(t, config.burst_every_s) < config.burst_s, config.burst_factor, 1.0)
    return profile


def _logins(config: TrafficConfig, rng: np.random.Generator, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Logins over the trace's span: a Poisson count, uniform times and users
    (none drawn, and no randomness used, at ``logins_per_s = 0``)."""
    if not config.logins_per_s or span <= 0:
        return np.zeros(0), np.zeros(0, np.int32)
    count = int(rng.poisson(config.logins_per_s * span))
    return np.sort(rng.random(count) * span), rng.integers(0, config.users, count).astype(np.int32)


def _reads_and_badges(config: TrafficConfig, rng: np.random.Generator, offsets: np.ndarray,
                      members: np.ndarray, msg_t: np.ndarray, sender: np.ndarray,
                      conv: np.ndarray) -> tuple[np.ndarray, ...]:
    """A recipient with no read pending for a conversation schedules one with
    probability read_probability; a pending read covers later messages."""
    n_conv = len(offsets) - 1
    pending: dict[int, float] = {}
    read_t: list[float] = []
    read_user: list[int] = []
    read_conv: list[int] = []
    badge_t: list[np.ndarray] = []
    badge_user: list[np.ndarray] = []
    delays = rng.exponential(config.read_delay_mean_s, 1 << 16)
    coins = rng.random(1 << 16)
    draw = 0
    for t, s, c in zip(msg_t.tolist(), sender.tolist(), conv.tolist()):
        recipients = members[offsets[c]:offsets[c + 1]]
        recipients = recipients[recipients != s]
        pushed = rng.random(len(recipients)) < config.badge_probability
        if pushed.any():
            badge_user.append(recipients[pushed])
            badge_t.append(np.full(int(pushed.sum()), t + config.badge_delay_s))
        for u in recipients.tolist():
            key = u * n_conv + c
            if pending.get(key, -1.0) >= t:
                continue
            if draw == len(coins):
                delays = rng.exponential(config.read_delay_mean_s, 1 << 16)
                coins = rng.random(1 << 16)
                draw = 0
            if coins[draw] < config.read_probability:
                when = t + delays[draw]
                pending[key] = when
                read_t.append(when)
                read_user.append(u)
                read_conv.append(c)
            draw += 1
    return (np.array(read_t, np.float64), np.array(read_user, np.int32), np.array(read_conv, np.int32),
            np.concatenate(badge_t) if badge_t else np.zeros(0),
            np.concatenate(badge_user) if badge_user else np.zeros(0, np.int32))
