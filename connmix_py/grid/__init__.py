"""The grid: several engine processes as one gateway over a Redis-protocol
server (Redis 6+, Valkey, KeyDB), which is both broker (pub/sub between
nodes) and registry (which nodes exist). See the README's "Running a grid"."""
