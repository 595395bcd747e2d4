"""husk worker shim for Python: runs `handler(event)` from a user module in husk's
worker mode (see guest-agent/src/worker.rs for the framing).

    python3 -S -B husk_worker.py /path/to/app.py

Requests arrive on stdin as a u32 little-endian length plus the payload; each answer
goes to stdout as a status byte (0 ok, 1 error), a u32 little-endian length and the
body. The module is imported once, at start-up (so a snapshot taken after boot holds
it imported and warm). The event is the payload decoded as JSON when it is valid JSON,
otherwise the raw bytes. A handler returning bytes is answered as is, a str as UTF-8,
anything else as JSON. An exception answers status 1 with the traceback. print() in
the handler goes to stderr: stdout carries only frames.
"""

import importlib.util
import json
import struct
import sys
import traceback

STATUS_OK = 0
STATUS_ERROR = 1
MAX_REQUEST = 64 * 1024 * 1024


def load_handler(path):
    spec = importlib.util.spec_from_file_location("husk_app", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"husk_worker: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise SystemExit(f"husk_worker: {path} has no handler(event) function")
    return handler


def read_exact(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def decode_event(payload):
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload


def encode_result(result):
    if isinstance(result, (bytes, bytearray)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode()
    return json.dumps(result).encode()


def serve(handler, stdin, stdout):
    while True:
        header = read_exact(stdin, 4)
        if header is None:
            return
        (length,) = struct.unpack("<I", header)
        if length > MAX_REQUEST:
            raise SystemExit(f"husk_worker: request of {length} bytes exceeds {MAX_REQUEST}")
        payload = read_exact(stdin, length)
        if payload is None:
            return
        try:
            status, body = STATUS_OK, encode_result(handler(decode_event(payload)))
        except Exception:  # the function's error, reported to the caller
            status, body = STATUS_ERROR, traceback.format_exc().encode()
        stdout.write(struct.pack("<BI", status, len(body)))
        stdout.write(body)
        stdout.flush()


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: husk_worker.py APP.py")
    frames_out = sys.stdout.buffer
    sys.stdout = sys.stderr
    handler = load_handler(sys.argv[1])
    serve(handler, sys.stdin.buffer, frames_out)


if __name__ == "__main__":
    main()
