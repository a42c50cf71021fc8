"""``oxc serve``'s HTTP server: waitress, guarded against slow clients.

waitress gives a connection as long as it likes to send its request headers,
so a few hundred connections that each trickle a byte now and then fill its
connection limit and nobody else gets in. ``create_server`` builds waitress's
server with two guards:

- at most ``per_client`` connections from one client address that are not
  being served (still sending a request, or idle between requests); one more
  is closed as soon as it is accepted, before it holds anything;
- a header deadline: a connection must finish the headers of each request
  within ``header_timeout`` seconds of being accepted (for its first request)
  or of the first byte of the request (for the next ones); else it is closed.
  A connection idle between requests is left to waitress's
  ``channel_timeout``, and one with a request in progress (an upload, a
  stream) is left alone.

Behind a reverse proxy every connection comes from the proxy's address, so
the cap belongs in the proxy (MAX_CONNECTIONS_PER_CLIENT=0 turns it off
here). Used by ``oxc_cli.serve``::

    server = oxc_server.create_server(app, per_client=50, header_timeout=10, **waitress_options)
    server.run()
"""

import collections
import logging
import threading
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("oxc.server")

#: Seconds between warnings about refused or late connections (an attack must not flood the log).
WARN_EVERY = 60


class GuardedChannel(HTTPChannel):
    """A waitress connection that knows when its request headers are due."""

    def __init__(self, server, sock, addr, adj, map=None):
        self.client_address = addr[0] if isinstance(addr, tuple) else addr
        super().__init__(server, sock, addr, adj, map=map)
        server.tally.add(self)
        #: time.time() by which the headers being read must be complete; None while none are awaited.
        self.headers_due = self.creation_time + server.header_timeout if server.header_timeout else None

    def received(self, data):
        timeout = self.server.header_timeout
        if timeout and data and self.request is None and self.headers_due is None:
            self.headers_due = time.time() + timeout  # the first byte of the next request
        result = super().received(data)
        if self.request is None or self.request.headers_finished:
            self.headers_due = None  # every request complete, or reading a body
        return result

    def late(self, now):
        """True when the headers being read are overdue (and no request of this connection runs)."""
        return self.headers_due is not None and now > self.headers_due and not self.requests

    def del_channel(self, map=None):
        super().del_channel(map)
        self.server.tally.discard(self)


class Tally:
    """Each client address's open connections, shared by every listening socket of one server."""

    def __init__(self, per_client):
        self.per_client = per_client
        self._channels = collections.defaultdict(set)
        self._lock = threading.Lock()

    def admits(self, client):
        """Whether ``client`` may open one more connection: fewer than ``per_client`` of its others wait.

        Waiting means not being served: still sending a request, or idle
        between requests. Connections with a request in progress (a stream, a
        queued request) do not count; the threads and listener caps bound those.
        """
        if not self.per_client:
            return True
        with self._lock:
            waiting = 0
            for channel in self._channels.get(client, ()):
                if not channel.requests:
                    waiting += 1
                    if waiting >= self.per_client:
                        return False
            return True

    def add(self, channel):
        with self._lock:
            self._channels[channel.client_address].add(channel)

    def discard(self, channel):
        with self._lock:
            channels = self._channels.get(channel.client_address)
            if channels is not None:
                channels.discard(channel)
                if not channels:
                    del self._channels[channel.client_address]


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with a per-address connection cap and a header deadline."""

    channel_class = GuardedChannel

    def __init__(self, application, map, dispatcher, adj, sockinfo, tally, header_timeout=0):
        self.tally = tally
        self.header_timeout = header_timeout
        self._refused = self._overdue = 0
        self._warned_at = 0.0
        super().__init__(application, map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)

    def handle_accept(self):
        # As waitress's own, plus the cap: a connection beyond it is closed before a channel exists.
        try:
            pair = self.accept()
            if pair is None:
                return
            conn, addr = pair
            self.set_socket_options(conn)
        except OSError:
            if self.adj.log_socket_errors:
                self.logger.warning("server accept() threw an exception", exc_info=True)
            return
        addr = self.fix_addr(addr)
        client = addr[0] if isinstance(addr, tuple) else addr
        if not self.tally.admits(client):
            conn.close()
            self._refused += 1
            self._warn()
            return
        self.channel_class(self, conn, addr, self.adj, map=self._map)

    def maintenance(self, now):
        super().maintenance(now)
        if self.header_timeout:
            for channel in list(self.active_channels.values()):
                if isinstance(channel, GuardedChannel) and channel.late(now):
                    channel.will_close = True  # closed by the loop on its next pass
                    channel.headers_due = None
                    self._overdue += 1
            if self._overdue:
                self._warn()

    def _warn(self):
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "slow or greedy clients: %d connections refused (%d waiting from one address), %d closed "
                "for not finishing their headers within %d s",
                self._refused,
                self.tally.per_client,
                self._overdue,
                self.header_timeout,
            )
            self._refused = self._overdue = 0


def create_server(application, per_client=0, header_timeout=0, **options):
    """A waitress server for ``application`` (``options`` are waitress's settings) with the guards on.

    ``per_client``: connections one client address may hold open (0: no cap);
    ``header_timeout``: seconds a connection has to send a request's headers
    (0: no deadline).
    """
    if header_timeout:
        # Deadlines are checked at each maintenance pass.
        options["cleanup_interval"] = min(options.get("cleanup_interval", 30), 1)
    adj = Adjustments(**options)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map, tally = {}, Tally(per_client)
    servers = [
        GuardedServer(application, socket_map, dispatcher, adj, sockinfo, tally, header_timeout)
        for sockinfo in adj.listen
    ]
    if len(servers) == 1:
        return servers[0]
    return MultiSocketServer(
        socket_map, adj, [(s.effective_host, s.effective_port) for s in servers], dispatcher, servers[-1].log_info
    )
