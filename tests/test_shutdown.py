"""
Graceful shutdown of a real twistd raps process on SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import time

from redis_ajax_push.testing import free_port
from tests.test_tap import STOP_TIMEOUT, fetch_when_ready
from tests.twistd_process import raps_command, running_twistd


def read_response(client, timeout=10.0):
    """
    Read from C{client} until the server closes it or the chunked body ends,
    and return the status code and the body's JSON text.
    """
    client.settimeout(timeout)
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    # One chunk: its size line, the JSON, then the last chunk.
    json_text = body.split(b"\r\n")[1]
    return status, json_text


def test_sigterm_ends_watches(tmp_path, redis_server, redis_client):
    """
    On SIGTERM, an open watch gets 503 shutting_down, the daemon closes its
    Redis connections and twistd exits with status 0.
    """
    redis_client.set("RA_D_sd1", b'{"status": "running"}')
    baseline_clients = len(redis_client.client_list())
    port = free_port()
    log_path = tmp_path / "twistd.out"
    command = raps_command(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--redis", redis_server.url
    )
    with running_twistd(command, tmp_path, log_path) as process:
        fetch_when_ready(f"http://127.0.0.1:{port}/task/sd1", process, log_path)
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /task/sd1?watch HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 10
        while redis_client.pubsub_numsub("RA_SC_sd1")[0][1] != 1:
            assert time.monotonic() < deadline, "the watch did not subscribe"
            time.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        status, body = read_response(client)
        exit_status = process.wait(timeout=STOP_TIMEOUT)
        client.close()

    log = log_path.read_text(errors="replace")
    assert status == 503
    assert json.loads(body)["error"] == "shutting_down"
    assert exit_status == 0
    assert "Traceback" not in log
    assert len(redis_client.client_list()) == baseline_clients
