"""The systemd notify protocol, in a few lines of our own.

`Type=notify` services tell systemd how they are doing by sending datagrams such as `READY=1` to
the socket named by `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`). Without that
variable every call is a no-op, so the daemon runs the same by hand. A send that fails is logged,
never raised: systemd's bookkeeping must not take the daemon down.

`WATCHDOG=1` is sent from a trio task every half of `$WATCHDOG_USEC`: if the event loop is stuck,
the pings stop and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Mapping

import trio

from flexbot import logs

log = logs.get_logger("flexbot.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket's name starts with a NUL byte; systemd writes it with "@".
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self.sent: deque[str] = deque(maxlen=100)  # the latest, for tests and debugging

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *states: str) -> bool:
        """Send `states` (e.g. "READY=1", "STATUS=…") in one datagram; False if not sent."""
        if not self.address:
            return False
        message = "\n".join(states)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.warning("systemd.notify_failed", states=list(states), reason=str(exc))
            return False
        self.sent.append(message)
        return True

    def status(self, line: str) -> None:
        self.notify(f"STATUS={line}")

    async def keep_watchdog(self) -> None:
        """Ping the watchdog for ever (if systemd asked for one)."""
        if self.watchdog_s is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_s / 2)
