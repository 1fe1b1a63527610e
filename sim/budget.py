"""The memory a run will need, estimated before it starts, against what
this machine (and the process's limits) let it have.

The figures per membership, delivery and operation were measured on the
simulation (peak RSS of `countdrift run`, lua): 296,010 operations and
200,000 deliveries took 83 MiB over a small run's; 699,963 operations and
1,999,980 deliveries (one group of 100,000) took 276 MiB: about 245 bytes
an operation and 52 a delivery. The estimate takes twice that, so that a
run it lets through does not run out of memory on the way.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path

from sim.errors import UsageError
from sim.traffic import TrafficConfig, Work, expected_memberships, work

BASE_BYTES = 160 * 2 ** 20       # Python, numpy, SimPy, a small run's structures
OPERATION_BYTES = 500
DELIVERY_BYTES = 100
MEMBERSHIP_BYTES = 200          # drawing them peaked at 105 bytes each, the run keeps them too
SHARE = 0.8                      # of the memory a run may take


def needed_bytes(done: Work, processes: int = 1) -> int:
    """The estimated peak of ``processes`` runs of this work at once."""
    per_run = (done.operations * OPERATION_BYTES + done.deliveries * DELIVERY_BYTES
               + done.memberships * MEMBERSHIP_BYTES)
    return BASE_BYTES + processes * per_run


def cgroup_limit() -> int | None:
    """The memory limit of this process's control group (a container's, a
    CI job's), the lowest on its way to the root, or None where there is none."""
    limits = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":          # cgroup v1
            roots, name = [Path("/sys/fs/cgroup/memory")], "memory.limit_in_bytes"
        elif controllers == "":              # cgroup v2
            roots, name = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")], "memory.max"
        else:
            continue
        for root in roots:
            place = root / path.lstrip("/")
            for folder in (place, *place.parents):
                if not folder.is_relative_to(root):
                    break
                try:
                    value = (folder / name).read_text().strip()
                except OSError:
                    continue
                if value.isdigit() and int(value) < 2 ** 60:   # "max", or the kernel's "no limit"
                    limits.append(int(value))
    return min(limits) if limits else None


def available_bytes() -> int:
    """What a run may take here: a share of the machine's memory, of its
    control group's limit, or of what the address-space limit (ulimit -v)
    leaves this process."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    physical = min(physical, cgroup_limit() or physical)
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return int(physical * SHARE)
    try:
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        used = 0
    return int(min(physical, max(0, limit - used)) * SHARE)


def check(traffic: TrafficConfig, seed: int, where: str, processes: int = 1) -> Work:
    """Refuse, before anything runs, traffic whose run would not fit in memory
    here: first from the memberships the scenario asks for (drawing 19.8
    million of them took 2 GiB and 30 s here: that alone must fit), then from
    the work the drawn trace holds."""
    memberships = expected_memberships(traffic)
    needed, available = BASE_BYTES + processes * memberships * MEMBERSHIP_BYTES, available_bytes()
    if needed > available:
        raise UsageError(f"{where}: traffic.users x traffic.dm_per_user and the groups ask for about "
                         f"{memberships:,.0f} conversation memberships, about {needed / 2 ** 30:.1f} GiB to draw and "
                         f"run; this machine lets a run have {available / 2 ** 30:.1f} GiB: lower traffic.users, "
                         f"traffic.dm_per_user or traffic.groups")
    return check_work(work(traffic, seed), where, processes)


def check_work(done: Work, where: str, processes: int = 1) -> Work:
    needed, available = needed_bytes(done, processes), available_bytes()
    if needed > available:
        runs = f" x {processes} processes at once" if processes > 1 else ""
        raise UsageError(f"{where}: a run of this traffic holds {done.deliveries:,} deliveries (traffic.messages x "
                         f"each message's recipients) and up to {done.operations:,} operations, about "
                         f"{needed / 2 ** 30:.1f} GiB{runs}; this machine lets a run have {available / 2 ** 30:.1f} "
                         f"GiB: lower traffic.messages, traffic.max_group_size or traffic.users")
    return done
