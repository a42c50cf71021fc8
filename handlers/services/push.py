"""Delivering notifications to webhooks: signed, retried, durable, off the request path.

A request that causes a notification only adds a job to the store's push
queue (bounded by PUSH_QUEUE_MAX; beyond it the job is kept as a dead letter
at once). A background worker sends due jobs as JSON POSTs signed with
HMAC-SHA256 over ``<timestamp>.<body>`` using PUSH_WEBHOOK_SECRET::

    X-Oxc-Timestamp: 1700000000
    X-Oxc-Signature: sha256=<hex>
    X-Oxc-Delivery: <job id>

A 2xx answer removes the job. Anything else (or no answer) is retried after
1, 2, 4 ... seconds (at most 5 minutes); after PUSH_MAX_ATTEMPTS tries the job
becomes a dead letter, which admins can list. Jobs live in the store, so
nothing queued is lost across a restart; a receiver should use X-Oxc-Delivery
to ignore the rare repeat of a delivery that succeeded just before a crash.
Several processes on one store share the queue: each worker claims due jobs
for twice the send timeout, so each job is sent by one of them (or again by
another once the lease runs out, if its sender died).

Where a delivery may go. Every URL (PUSH_WEBHOOK_URL and users' device
endpoints) is checked again when it is sent: http or https with a plain host
(no user name or password, no backslash, nothing percent-encoded in the host
or port), as ``parse_url`` reads it. The host is looked up once; every
address it resolves to must be public (not loopback, private, link-local,
multicast, reserved, unspecified, or a cloud's metadata address) and the port
80 or 443, unless PUSH_ALLOWED_ADDRESSES names the address (then any port).
The connection goes to the address that was checked, the name travelling
only in Host and in TLS's server name and certificate check, so a second
lookup cannot lead anywhere else (DNS rebinding). A refused URL makes its
job a dead letter at once, saying why; redirects are never followed.
"""

import dataclasses
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import urllib.parse

from .worker import Worker

log = logging.getLogger("oxc.push")

MAX_BACKOFF = 300
TIMEOUT = 5
RESPONSE_BYTES = 1024


# =============================================================================
# Where a delivery may go
# =============================================================================


class UnsafeURL(ValueError):
    """A push URL the server will not call; the message says why, to follow a name ("must not ...")."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A push URL as it will be called: the host lower-cased (an IP without brackets), the port filled in."""

    scheme: str
    host: str
    port: int
    path: str  # the path and query, as sent on the request line


#: A host name's labels (letters, digits, hyphens) or an IPv4 address, then an optional port.
_AUTHORITY = re.compile(
    r"(?P<host>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_IPV6_AUTHORITY = re.compile(r"\[(?P<host>[0-9a-f:.]+)\](?::(?P<port>[0-9]{1,5}))?")
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_url(url):
    """The Target of a push URL; UnsafeURL unless it is a plain http(s) URL.

    Anything that parsers read differently is refused rather than
    interpreted: ``http://127.0.0.1\\@allowed/`` is 127.0.0.1 to some and
    ``allowed`` to others, and so is ``http://127.0.0.1%2f@allowed/``.
    """
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        raise UnsafeURL("must be ASCII, without spaces or control characters (percent-encode the path)")
    if "\\" in url:
        raise UnsafeURL("must not contain backslashes")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in DEFAULT_PORTS or not url[len(parsed.scheme) :].startswith("://"):
        raise UnsafeURL("must be an http(s) URL")
    authority = parsed.netloc.lower()
    if "@" in authority:
        raise UnsafeURL("must not carry a user name or password (user@host)")
    if "%" in authority:
        raise UnsafeURL("must not percent-encode its host or port")
    match = _AUTHORITY.fullmatch(authority) or _IPV6_AUTHORITY.fullmatch(authority)
    if match is None:
        raise UnsafeURL("must name its host plainly: letters, digits, dots and hyphens, or an IP address")
    host, port = match["host"], match["port"]
    if authority.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UnsafeURL("must name its host plainly: that is not an IPv6 address") from None
    port = DEFAULT_PORTS[parsed.scheme] if port is None else int(port)
    if not 0 < port < 65536:
        raise UnsafeURL("must have a port from 1 to 65535")
    path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    return Target(parsed.scheme, host, port, path)


def allowed_networks(entries):
    """PUSH_ALLOWED_ADDRESSES (addresses or CIDR networks) as ip_network objects; ValueError names a bad one."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"must be IP addresses or networks like 10.0.0.0/8 or fd00::/8 (not {entry!r})") from None
    return tuple(networks)


#: Ports a delivery may use on an address that PUSH_ALLOWED_ADDRESSES does not name.
PUBLIC_PORTS = (80, 443)
#: Instance metadata services (AWS, GCP, Azure, Oracle; AWS ECS; AWS over IPv6; Alibaba).
METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")}
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _private_kind(ip):
    """What makes ``ip`` an address pushes must not reach ("a loopback address" ...), or None."""
    if ip.version == 6:
        teredo = ip.teredo[1] if ip.teredo else None
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None
        for inner in (ip.ipv4_mapped, ip.sixtofour, teredo, nat64):
            if inner is not None and _private_kind(inner):
                return f"{_private_kind(inner)} inside an IPv6 address"
    if ip in METADATA:
        return "a cloud metadata address"
    for kind, test in (
        ("an unspecified address", ip.is_unspecified),
        ("a loopback address", ip.is_loopback),
        ("a link-local address", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
        ("a private address", ip.is_private),
        ("a site-local address", getattr(ip, "is_site_local", False)),
        ("a reserved address", ip.is_reserved),
        ("not a public address", not ip.is_global),
    ):
        if test:
            return kind
    return None


def address_refusal(address, port, allowed=()):
    """Why a push may not go to ``address``:``port`` (None when it may); ``allowed``: allowed_networks()."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) names a link only
    if any(ip.version == network.version and ip in network for network in allowed):
        return None
    kind = _private_kind(ip)
    if kind is not None:
        return f"{address} is {kind} (only PUSH_ALLOWED_ADDRESSES can allow it)"
    if port not in PUBLIC_PORTS:
        return f"port {port} is not 80 or 443 (only PUSH_ALLOWED_ADDRESSES can allow it for {address})"
    return None


def literal_refusal(target, allowed=()):
    """Why ``target`` can be refused without looking its host up (an IP, or a port no name may use), or None."""
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        if target.port not in PUBLIC_PORTS and not allowed:
            return f"port {target.port} is not 80 or 443"
        return None
    return address_refusal(target.host, target.port, allowed)


def resolve(host, port):
    """Every address ``host`` resolves to for TCP, in the resolver's order: one lookup."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address already checked, whatever the name resolves to now.

    The name still goes in Host and, over TLS, in the server name and the
    certificate check; only the socket is opened to ``address``.
    """

    def __init__(self, target, address, timeout, tls=None):
        super().__init__(target.host, target.port, timeout=timeout)
        self.default_port = DEFAULT_PORTS[target.scheme]  # Host names the port only when it is not the default
        self.address = address
        self.tls = tls

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
        except BaseException:
            sock.close()
            raise


# =============================================================================
# Sending
# =============================================================================


def sign(secret, timestamp, body):
    """The X-Oxc-Signature value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff(attempts):
    """Seconds to wait after ``attempts`` failed tries."""
    return min(MAX_BACKOFF, 2 ** (attempts - 1))


class PushWorker:
    """One background thread draining the store's push queue.

    ``resolve(host, port)`` looks a host up (tests give their own); it is
    called once per delivery, and only the addresses it answered are called.
    """

    def __init__(self, store, settings, clock, resolve=resolve):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.resolve = resolve
        self.allowed = allowed_networks(settings.push_allowed_addresses)
        self._tls = None
        self._worker = Worker("oxc-push", self._drain, join_timeout=TIMEOUT + 2)
        self._warn_about(settings.push_webhook_url)

    def _warn_about(self, url):
        if not url:
            return
        try:
            refusal = literal_refusal(parse_url(url), self.allowed)
        except UnsafeURL as exc:
            refusal = f"the URL {exc}"
        if refusal:
            log.warning("push: deliveries to PUSH_WEBHOOK_URL will be refused: %s", refusal)

    def start(self):
        """Start the thread if there is or may be work (called on first enqueue and at start-up)."""
        self._worker.start()

    def _drain(self):
        """Deliver every due job; the seconds until the next one is due (at most 1)."""
        try:
            # Claimed for a while, so that no other process delivers it meanwhile.
            for job in self.store.claim_push_jobs(self.clock(), lease=2 * TIMEOUT):
                if self._worker.stopping:
                    return None
                self._deliver(job)
        except Exception:
            log.exception("push: the delivery loop failed; retrying shortly")
        following = self.store.next_push_time() if not self._worker.stopping else None
        return 1.0 if following is None else max(0.01, min(1.0, following - self.clock()))

    def _deliver(self, job):
        body = json.dumps(job["payload"], separators=(",", ":")).encode("utf-8")
        timestamp = str(int(self.clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "oxc-push",
            "X-Oxc-Timestamp": timestamp,
            "X-Oxc-Delivery": job["id"],
        }
        if self.settings.push_webhook_secret:
            headers["X-Oxc-Signature"] = sign(self.settings.push_webhook_secret, timestamp, body)
        attempts = job["attempts"] + 1
        try:
            target, addresses = self.check(job["url"])
        except UnsafeURL as exc:
            # Asking again would not change the answer: a dead letter at once, never sent.
            log.warning("push: refused to deliver to %s: %s", job["url"], exc)
            self.store.update_push_job(
                job["id"], {"attempts": attempts, "status": "dead", "last_error": f"refused: {exc}"}
            )
            return
        except OSError as exc:  # the name did not resolve (now): an ordinary failure, retried
            error = f"cannot resolve {job['url']}: {exc}"
        else:
            try:
                status = self._post(target, addresses, body, headers)
                if 200 <= status < 300:
                    self.store.delete_push_job(job["id"])
                    return
                error = f"HTTP {status}"  # a redirect too: it could lead off the addresses checked
            except (OSError, http.client.HTTPException) as exc:
                error = str(exc) or type(exc).__name__
        if attempts >= self.settings.push_max_attempts:
            log.warning("push: giving up on %s after %d tries: %s", job["url"], attempts, error)
            self.store.update_push_job(job["id"], {"attempts": attempts, "status": "dead", "last_error": error})
        else:
            self.store.update_push_job(
                job["id"],
                {"attempts": attempts, "last_error": error, "next_attempt_at": self.clock() + backoff(attempts)},
            )

    def check(self, url):
        """(Target, the addresses to call) for ``url``, looked up once; UnsafeURL says why not."""
        try:
            target = parse_url(url)
        except UnsafeURL as exc:
            raise UnsafeURL(f"the URL {exc}") from None
        try:
            addresses = self.resolve(target.host, target.port)
        except UnicodeError as exc:  # a name the IDNA codec refuses can never be looked up
            raise UnsafeURL(f"the host {target.host} cannot be looked up: {exc}") from None
        if not addresses:
            raise OSError(f"{target.host} has no address")
        for address in addresses:
            refusal = address_refusal(address, target.port, self.allowed)
            if refusal is not None:
                raise UnsafeURL(
                    refusal if address == target.host else f"{target.host} resolves to {address}; {refusal}"
                )
        return target, addresses

    def _post(self, target, addresses, body, headers):
        """POST ``body`` to the first of ``addresses`` that takes a connection; the answer's status."""
        if target.scheme == "https" and self._tls is None:
            self._tls = ssl.create_default_context()
        for number, address in enumerate(addresses):
            connection = PinnedConnection(target, address, TIMEOUT, self._tls if target.scheme == "https" else None)
            try:
                try:
                    connection.connect()
                except OSError:
                    if number + 1 < len(addresses):
                        continue  # the next address, as create_connection would
                    raise
                connection.request("POST", target.path, body=body, headers=headers)
                answer = connection.getresponse()
                answer.read(RESPONSE_BYTES)
                return answer.status
            finally:
                connection.close()
        raise OSError("no address to call")  # unreachable: check() returns at least one

    def close(self):
        """Stop the thread (jobs stay queued in the store)."""
        self._worker.close()
