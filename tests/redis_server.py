"""The private redis-server of the tests: flowd's own embedded-server launcher."""

from flowd.cli.embedded import RedisServer, find_redis_server, free_port, server_version

__all__ = ["RedisServer", "find_redis_server", "free_port", "server_version"]
