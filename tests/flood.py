"""Clients without an API key posting large JSON bodies to the gateway's `/v1`.

`python -m tests.flood HOST PORT CLIENTS BODY_BYTES SECONDS` runs CLIENTS
threads for SECONDS, each sending one body every CLIENTS seconds (under one
request a second in all), and prints how many requests were sent. The body is
a JSON array of zeros: costly to parse for a server that reads it.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def flood(host: str, port: int, clients: int, body_bytes: int, seconds: float) -> int:
    body = b"[" + b"0," * (body_bytes // 2 - 1) + b"0]"
    head = (
        "POST /v1/pings HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    sent = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        time.sleep(n)  # spread over the period
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=30) as connection:
                    connection.sendall(head)
                    connection.sendall(body)
                    connection.recv(1024)
            except OSError:
                pass  # refused early: the server hung up mid-body
            with lock:
                sent[0] += 1
            time.sleep(max(0.0, clients - (time.monotonic() - began)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent[0]


if __name__ == "__main__":
    host, port, clients, body_bytes, seconds = sys.argv[1:6]
    print(flood(host, int(port), int(clients), int(body_bytes), float(seconds)))
