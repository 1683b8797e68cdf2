#!/usr/bin/env python3
"""A real HTTP/2 client (python `h2`) for mirrorctl's HTTP/2 tests.

    h2_client.py MODE HOST PORT

Modes (each prints one JSON object on stdout and exits 0 when it ran to the end):
  rapid-reset  open streams and cancel each at once (CVE-2023-44487), up to 5000;
               reports how many were sent, the GOAWAY received (error code) and when.
  many-streams open as many concurrent streams as the server allows, plus 50 more;
               reports the advertised limit, 200s, refused streams.
  flow-control tiny receive window (1 KiB) on a 1 MiB download, read slowly; then a
               1 MiB upload sent only as the server's window allows; reports sizes + sha256.
Everything is bounded: a socket timeout of 10 s, and a count on every loop.
"""
import hashlib
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

TIMEOUT = 10.0


def connect(host, port, settings=None):
    s = socket.create_connection((host, port), timeout=TIMEOUT)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    if settings:
        c.update_settings(settings)
    s.sendall(c.data_to_send())
    return s, c


def headers(host, port, path, method="GET"):
    return [
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        (":authority", f"{host}:{port}"),
    ]


def pump(s, c, events, until, deadline):
    """Read and handle frames until `until()` is true, the peer closes, or the deadline."""
    while not until() and time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            events.append(("reset", None))
            break
        if not data:
            events.append(("closed", None))
            break
        try:
            evs = c.receive_data(data)
        except h2.exceptions.ProtocolError as e:  # peer closed the connection on us
            events.append(("protocol_error", str(e)))
            break
        for e in evs:
            events.append((type(e).__name__, e))
        out = c.data_to_send()
        if out:
            try:
                s.sendall(out)
            except OSError:
                events.append(("closed", None))
                break


def rapid_reset(host, port):
    s, c = connect(host, port)
    events = []
    pump(s, c, events, lambda: any(n == "RemoteSettingsChanged" for n, _ in events),
         time.monotonic() + TIMEOUT)
    sent = 0
    goaway = None
    start = time.monotonic()
    s.setblocking(False)
    for i in range(5000):
        sid = c.get_next_available_stream_id()
        try:
            c.send_headers(sid, headers(host, port, f"/reset/{i}"), end_stream=True)
            c.reset_stream(sid)
            s.sendall(c.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            break
        sent += 1
        try:
            data = s.recv(65536)
            if not data:
                break
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ConnectionTerminated):
                    goaway = int(e.error_code)
        except (BlockingIOError, h2.exceptions.ProtocolError):
            pass
        except OSError:
            break
        if goaway is not None:
            break
    s.setblocking(True)
    s.settimeout(2.0)
    if goaway is None:
        evs = []
        pump(s, c, evs, lambda: any(n == "ConnectionTerminated" for n, _ in evs),
             time.monotonic() + 5)
        for n, e in evs:
            if n == "ConnectionTerminated":
                goaway = int(e.error_code)
    s.close()
    return {"sent": sent, "goaway": goaway, "seconds": round(time.monotonic() - start, 3)}


def many_streams(host, port):
    s, c = connect(host, port)
    events = []
    pump(s, c, events, lambda: any(n == "RemoteSettingsChanged" for n, _ in events),
         time.monotonic() + TIMEOUT)
    limit = c.remote_settings.max_concurrent_streams
    want = min(limit, 1000) + 50
    # Send past the advertised limit on purpose: lift the client's own check.
    c.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = want + 10
    c.remote_settings.acknowledge()
    for i in range(want):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, headers(host, port, f"/many/{i}"), end_stream=True)
    s.sendall(c.data_to_send())
    done, refused = {}, {}
    evs = []

    deadline = time.monotonic() + 30
    while len(done) + len(refused) < want and time.monotonic() < deadline:
        evs.clear()
        pump(s, c, evs, lambda: len(evs) > 0, deadline)
        if not evs or evs[-1][0] in ("closed", "reset", "protocol_error"):
            break
        for n, e in evs:
            if n == "ResponseReceived":
                status = dict(e.headers).get(b":status")
                done[e.stream_id] = status.decode() if status else None
            elif n == "StreamReset":
                refused[e.stream_id] = int(e.error_code)
            elif n == "DataReceived":
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        out = c.data_to_send()
        if out:
            s.sendall(out)
    s.close()
    statuses = {}
    for v in done.values():
        statuses[v] = statuses.get(v, 0) + 1
    codes = {}
    for v in refused.values():
        codes[str(v)] = codes.get(str(v), 0) + 1
    return {"limit": limit, "opened": want, "statuses": statuses, "reset_codes": codes}


def flow_control(host, port):
    window = 1024
    s, c = connect(host, port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    # Download: the server may send only what the window allows; we grant 1 KiB at a time.
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers(host, port, "/big"), end_stream=True)
    s.sendall(c.data_to_send())
    body = bytearray()
    status = None
    largest_frame = 0
    ended = False
    deadline = time.monotonic() + 30
    for _ in range(100000):
        if ended or time.monotonic() > deadline:
            break
        evs = []
        pump(s, c, evs, lambda: len(evs) > 0, deadline)
        if not evs:
            break
        for n, e in evs:
            if n == "ResponseReceived" and e.stream_id == sid:
                status = dict(e.headers).get(b":status", b"").decode()
            elif n == "DataReceived" and e.stream_id == sid:
                body += e.data
                largest_frame = max(largest_frame, len(e.data))
                c.acknowledge_received_data(e.flow_controlled_length, sid)
            elif n == "StreamEnded" and e.stream_id == sid:
                ended = True
        s.sendall(c.data_to_send())
    download = {
        "status": status,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "largest_frame": largest_frame,
    }
    # Upload 1 MiB, never past the server's flow-control window.
    payload = bytes((i * 7) % 251 for i in range(1 << 20))
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers(host, port, "/upload", "POST") + [("content-length", str(len(payload)))])
    s.sendall(c.data_to_send())
    sent = 0
    status = None
    stalls = 0
    deadline = time.monotonic() + 30
    for _ in range(100000):
        if time.monotonic() > deadline:
            break
        if sent < len(payload):
            room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(payload) - sent)
            if room > 0:
                end = sent + room == len(payload)
                c.send_data(sid, payload[sent:sent + room], end_stream=end)
                sent += room
                s.sendall(c.data_to_send())
                continue
            stalls += 1
        evs = []
        pump(s, c, evs, lambda: len(evs) > 0, deadline)
        if not evs:
            break
        for n, e in evs:
            if n == "ResponseReceived" and e.stream_id == sid:
                status = dict(e.headers).get(b":status", b"").decode()
            elif n == "DataReceived":
                c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        s.sendall(c.data_to_send())
        if status is not None and sent == len(payload):
            break
    s.close()
    upload = {
        "status": status,
        "sent": sent,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "waited_for_window": stalls,
    }
    return {"download": download, "upload": upload}


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fn = {"rapid-reset": rapid_reset, "many-streams": many_streams, "flow-control": flow_control}[mode]
    print(json.dumps(fn(host, port)))


if __name__ == "__main__":
    main()
