"""Push URLs as an attacker writes them: the server calls only the public addresses it checked.

Device endpoints are refused at registration when any parser could read them
two ways (``\\``, user@, percent-encoded hosts) or when their address or port
is not one pushes may reach; every delivery checks again, looks the host up
once, and connects to the very address it checked.
"""

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
from conftest import assert_error
from server import wait_until

from handlers.services import push


class Receiver:
    """An HTTP server on ``host`` answering every POST with ``status`` (and ``headers``)."""

    def __init__(self, host="127.0.0.1", port=0, status=200, headers=()):
        self.deliveries = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers), body))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


def direct_message(client):
    """Alice writes to Bob: one notification for Bob, so one push per receiving URL."""
    alice, bob = client.user("alice"), client.user("bob")
    client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers)
    return alice, bob


def dead_letters(client, admin):
    return client.get("/api/admin/push/dead-letters", headers=admin.headers).json["data"]


# -- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("http://127.0.0.1\\@hooks.example/", "backslash"),
        ("http://127.0.0.1%2f@hooks.example/", "user name"),
        ("http://user:secret@hooks.example/push", "user name"),
        ("http://hooks.example%2f@127.0.0.1/", "user name"),
        ("http://hooks%2eexample/push", "percent-encode"),
        ("http://hooks.example:8080/push", "port 8080"),
        ("http://hooks.example:0/push", "port from 1 to 65535"),
        ("http://hooks.example\t/push", "control characters"),
        ("http://hooks.ex\u0430mple/push", "ASCII"),
        ("http://hooks.example:80:81/push", "host plainly"),
        ("http:/hooks.example/push", "http(s) URL"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://127.0.0.1/push", "loopback"),
        ("http://[::1]/push", "loopback"),
        ("http://10.0.0.7/push", "private"),
    ],
)
def test_endpoints_that_could_reach_somewhere_else_are_refused_at_registration(make_client, endpoint, message):
    # Even hosts the operator listed are refused when they are addresses pushes must not reach.
    client = make_client(push_device_hosts=("hooks.example", "169.254.169.254", "127.0.0.1", "[::1]", "10.0.0.7"))
    alice = client.user("alice")
    answer = client.post_json(
        "/api/devices", {"platform": "web", "endpoint": endpoint}, headers=alice.headers, status=400
    )
    assert_error(answer, 400, message)
    assert client.get("/api/devices", headers=alice.headers).json["data"] == []


def test_an_allow_listed_address_may_be_registered_on_any_port(make_client):
    client = make_client(push_device_hosts=("10.0.0.7", "hooks.example"), push_allowed_addresses=("10.0.0.0/24",))
    alice = client.user("alice")
    for endpoint in ("http://10.0.0.7:8080/push", "https://hooks.example:8443/push"):  # a name: checked when sent
        client.post_json("/api/devices", {"platform": "web", "endpoint": endpoint}, headers=alice.headers, status=201)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.170.2",
        "100.100.100.200",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fd00:ec2::254",
        "fe80::1",
        "fec0::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "2002:a00:1::",
    ],
)
def test_no_private_loopback_link_local_multicast_reserved_or_metadata_address_is_reachable(address):
    assert push.address_refusal(address, 443) is not None
    assert push.address_refusal(address, 443, push.allowed_networks([address])) is None  # unless named


def test_public_addresses_are_reachable_on_80_and_443_only():
    assert push.address_refusal("93.184.216.34", 443) is None
    assert push.address_refusal("2606:2800:220:1:248:1893:25c8:1946", 80) is None
    assert "port 8080" in push.address_refusal("93.184.216.34", 8080)
    assert push.address_refusal("93.184.216.34", 8080, push.allowed_networks(["93.184.216.0/24"])) is None


def test_a_webhook_url_with_a_user_or_a_backslash_stops_start_up():
    from oxc_wsgi import ConfigError, Settings

    for url in ("http://127.0.0.1\\@hooks.example/", "http://a@hooks.example/"):
        with pytest.raises(ConfigError, match="PUSH_WEBHOOK_URL"):
            Settings.from_environ({"PUSH_WEBHOOK_URL": url}, env_file=None)
    with pytest.raises(ConfigError, match="PUSH_ALLOWED_ADDRESSES"):
        Settings.from_environ({"PUSH_ALLOWED_ADDRESSES": "10.0.0.0/8, intranet"}, env_file=None)


# -- delivery ---------------------------------------------------------------------------------


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery_and_never_called(make_client, receiver):
    client = make_client(push_webhook_url=f"http://localhost:{receiver.port}/hook", admins=("alice",))
    alice, _ = direct_message(client)
    assert wait_until(lambda: dead_letters(client, alice), timeout=5)
    [letter] = dead_letters(client, alice)
    assert letter["attempts"] == 1 and letter["last_error"].startswith("refused: localhost resolves to ")
    assert "loopback" in letter["last_error"]
    assert receiver.deliveries == []


def test_a_device_endpoint_is_checked_again_at_every_delivery(make_client, receiver):
    # Registered while its name pointed somewhere allowed; by delivery time it points at loopback.
    client = make_client(
        push_device_hosts=("hooks.example",), push_allowed_addresses=("10.20.30.0/24",), admins=("alice",)
    )
    alice, bob = client.user("alice"), client.user("bob")
    client.post_json(
        "/api/devices",
        {"platform": "web", "endpoint": f"http://hooks.example:{receiver.port}/hook"},
        headers=bob.headers,
        status=201,
    )
    client.wsgi.core.ctx.push.resolve = lambda host, port: ["127.0.0.1"]
    client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers)
    assert wait_until(lambda: dead_letters(client, alice), timeout=5)
    [letter] = dead_letters(client, alice)
    assert "hooks.example resolves to 127.0.0.1" in letter["last_error"] and "loopback" in letter["last_error"]
    assert receiver.deliveries == []


def test_an_allow_listed_loopback_receiver_gets_the_push_on_the_checked_address(make_client, receiver):
    client = make_client(
        push_webhook_url=f"http://hooks.example:{receiver.port}/hook?via=oxc", push_allowed_addresses=("127.0.0.1/32",)
    )
    looked_up = []

    def resolve(host, port):
        looked_up.append((host, port))
        return ["127.0.0.1"]

    client.wsgi.core.ctx.push.resolve = resolve
    _, bob = direct_message(client)
    assert wait_until(lambda: receiver.deliveries, timeout=5)
    headers, body = receiver.deliveries[0]
    assert headers["Host"] == f"hooks.example:{receiver.port}"  # the name travels; the address was pinned
    assert json.loads(body)["deliveries"][0]["user_id"] == bob.id
    assert looked_up == [("hooks.example", receiver.port)]


def test_dns_rebinding_cannot_reach_loopback(make_client, monkeypatch):
    # The name answers an allowed address when checked and loopback afterwards, as a rebinding
    # attacker's DNS server would. Only one lookup happens, so loopback is never called.
    allowed_side, loopback_side = Receiver("127.0.0.2"), None
    try:
        loopback_side = Receiver("127.0.0.1", port=allowed_side.port)
        real = socket.getaddrinfo
        answers = []

        def rebinding(host, port, *args, **kwargs):
            if host != "rebind.example":
                return real(host, port, *args, **kwargs)
            answers.append("127.0.0.2" if not answers else "127.0.0.1")
            return real(answers[-1], port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        client = make_client(
            push_webhook_url=f"http://rebind.example:{allowed_side.port}/hook", push_allowed_addresses=("127.0.0.2",)
        )
        direct_message(client)
        assert wait_until(lambda: allowed_side.deliveries, timeout=5)
        assert loopback_side.deliveries == [] and answers == ["127.0.0.2"]
    finally:
        allowed_side.close()
        if loopback_side is not None:
            loopback_side.close()


def test_redirects_are_not_followed(make_client, receiver):
    elsewhere = Receiver(status=307, headers=[("Location", f"http://127.0.0.1:{receiver.port}/hook")])
    try:
        client = make_client(
            push_webhook_url=f"http://127.0.0.1:{elsewhere.port}/hook",
            push_max_attempts=1,
            push_allowed_addresses=("127.0.0.1",),
            admins=("alice",),
        )
        alice, _ = direct_message(client)
        assert wait_until(lambda: dead_letters(client, alice), timeout=5)
        assert dead_letters(client, alice)[0]["last_error"] == "HTTP 307"
        assert len(elsewhere.deliveries) == 1 and receiver.deliveries == []
    finally:
        elsewhere.close()


def test_over_tls_the_pinned_connection_names_the_host_and_checks_its_certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("making a certificate needs the openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=hooks.example",
            "-addext",
            "subjectAltName=DNS:hooks.example",
        ],
        check=True,
        capture_output=True,
    )
    server_names = []
    receiver = Receiver(status=204)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    tls.sni_callback = lambda sock, name, context: server_names.append(name)
    receiver.server.socket = tls.wrap_socket(receiver.server.socket, server_side=True)
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        for host in ("hooks.example", "elsewhere.example"):
            target = push.parse_url(f"https://{host}:{receiver.port}/hook")
            connection = push.PinnedConnection(target, "127.0.0.1", 5, trusting)
            try:
                connection.request("POST", target.path, body=b"{}", headers={"Content-Type": "application/json"})
                assert connection.getresponse().status == 204
            except ssl.SSLCertVerificationError:
                assert host == "elsewhere.example"  # the address was right, the certificate is not this name's
            finally:
                connection.close()
        assert server_names == ["hooks.example", "elsewhere.example"]
        assert [headers["Host"] for headers, _ in receiver.deliveries] == [f"hooks.example:{receiver.port}"]
    finally:
        receiver.close()
