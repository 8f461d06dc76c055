"""The embedded store: an in-memory Redis (fakeredis, with Lua) served on loopback by `serve`.

It speaks the Redis protocol, so the app, its script and `listen` use it exactly like Redis.
Data lives in the serving process and is gone when it stops.
"""

from __future__ import annotations

import threading

from fakeredis import TcpFakeServer

from webhook.settings import ENV_PREFIX, ConfigError


class EmbeddedRedis:
    def __init__(self, port: int) -> None:
        try:
            self._server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
        except OSError as exc:
            raise ConfigError(
                f"the embedded store cannot listen on 127.0.0.1:{port} ({exc.strerror}); set "
                f"{ENV_PREFIX}EMBEDDED_PORT to a free port or {ENV_PREFIX}REDIS_URL to a Redis"
            ) from None
        self.url = f"redis://127.0.0.1:{port}/0"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-redis", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
