"""The simulated target a scenario's [server] describes: one server with
its replicas, or a Redis Cluster of them (one per shard)."""
from __future__ import annotations

from sim.backends.model.persistence import Persistence
from sim.backends.model.server import Server, ServiceTimes
from sim.scenario import ServerConfig


def make_server(config: ServerConfig) -> Server:
    """The simulated target: one server, or a cluster of them (one per shard)."""
    if config.topology == "cluster":
        from sim.backends.model.cluster import ClusterServer
        return ClusterServer([_server(config, config.cluster_replicas_per_primary, f"shard{index}")
                              for index in range(config.cluster_primaries)])
    return _server(config, config.replicas)


def _server(config: ServerConfig, replicas: int, name: str = "primary") -> Server:
    return Server(ServiceTimes(config.request_us / 1e6, config.command_us / 1e6, config.script_us / 1e6,
                               config.script_call_us / 1e6, config.fsync_always_us / 1e6, config.wake_us / 1e6,
                               config.element_us / 1e6, config.stream_read_us / 1e6, config.stream_ack_us / 1e6,
                               config.stream_delete_us / 1e6),
                  Persistence(config.appendonly, config.appendfsync, config.rdb_interval_s),
                  replicas, config.replication_lag_ms / 1000.0, config.min_replicas_to_write, name)
