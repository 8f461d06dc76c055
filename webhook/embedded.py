"""The embedded store: an in-memory Redis (fakeredis, with Lua) served on loopback by `serve`.

It speaks the Redis protocol, so the app, its script and `listen` use it exactly like Redis.
Data lives in the serving process and is gone when it stops.
"""

from __future__ import annotations

import threading

import redis
from fakeredis import TcpFakeServer

from webhook.settings import ENV_PREFIX, ConfigError, embedded_url
from webhook.store import SCRIPTS, script_source


class EmbeddedRedis:
    def __init__(self, port: int) -> None:
        try:
            self._server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        except OSError as exc:
            raise ConfigError(
                f"the embedded store cannot listen on 127.0.0.1:{port} ({exc.strerror}); set "
                f"{ENV_PREFIX}EMBEDDED_PORT to a free port or {ENV_PREFIX}REDIS_URL to a Redis"
            ) from None
        self.url = embedded_url(port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-redis", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        # fakeredis's server closes the connection on an error reply such as NOSCRIPT, which
        # redis-py would otherwise answer by loading the script: so load them all up front.
        with redis.Redis.from_url(self.url) as client:
            for name in SCRIPTS:
                client.script_load(script_source(name))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
