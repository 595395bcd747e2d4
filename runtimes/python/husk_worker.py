"""husk worker shim for Python: runs `handler(event)` (or `handler(event, context)`)
from a user module in husk's worker mode (see guest-agent/src/worker.rs for the framing).

    python3 -S -B husk_worker.py /path/to/app.py

Each request arrives on stdin as a u32 little-endian header length, the header (UTF-8
`key: value` lines: `request-id`, `deadline-unix-ms`, one `env: NAME=VALUE` per
variable; unknown keys are ignored), a u32 little-endian payload length and the
payload. Each answer goes to the response descriptor named by HUSK_RESPONSE_FD (3 under
the agent; stdout when the variable is unset) as a status byte (0 ok, 1 error), a u32
little-endian length and the body. The module is imported once, at start-up; then the
shim writes the ready frame (status byte 2, length 0) there, which tells the agent the
function is initialised: only then does the agent report the sandbox ready, so a
snapshot taken at ready (`husk snapshot create --at-ready`) holds it imported and warm.
An import that fails exits the shim before the ready frame (the boot fails, with the
traceback in the agent's message). The event is the payload
decoded as JSON when it is valid JSON, otherwise the raw bytes; a handler with two
parameters also gets a context dict (`request_id`, `deadline_unix_ms`, `env`). A handler
returning bytes is answered as is, a str as UTF-8, anything else as JSON. An exception
answers status 1 with the traceback. print() goes to the worker's log streams, never
into the frames.

Before each request the shim reseeds the `random` module's shared generator from the
kernel (`random.seed()`, when some module imported `random`): sandboxes restored from
one snapshot share the memory of the process, and would otherwise draw the same
`random.random()` sequence. A function that wants a reproducible sequence keeps its own
`random.Random(seed)` instance, which the shim leaves alone.
"""

import importlib.util
import json
import os
import struct
import sys
import traceback

STATUS_OK = 0
STATUS_ERROR = 1
STATUS_READY = 2
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


MAX_HEADER = 512 * 1024


def parse_header(raw):
    context = {"request_id": "", "deadline_unix_ms": 0, "env": {}}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "request-id":
            context["request_id"] = value
        elif key == "deadline-unix-ms":
            try:
                context["deadline_unix_ms"] = int(value.strip())
            except ValueError:
                pass
        elif key == "env":
            name, eq, val = value.partition("=")
            if eq:
                context["env"][name] = val
    return context


def read_frame(stream, limit, what):
    raw = read_exact(stream, 4)
    if raw is None:
        return None
    (length,) = struct.unpack("<I", raw)
    if length > limit:
        raise SystemExit(f"husk_worker: {what} of {length} bytes exceeds {limit}")
    return read_exact(stream, length)


def reseed_random():
    # After a restore the kernel's generator differs in every clone (husk reseeds it),
    # the interpreter's does not: draw a fresh seed from the kernel per request.
    rng = sys.modules.get("random")
    if rng is not None:
        rng.seed()


def serve(handler, stdin, out):
    wants_context = getattr(getattr(handler, "__code__", None), "co_argcount", 1) >= 2
    while True:
        header = read_frame(stdin, MAX_HEADER, "request header")
        if header is None:
            return
        payload = read_frame(stdin, MAX_REQUEST, "request")
        if payload is None:
            return
        reseed_random()
        try:
            event = decode_event(payload)
            if wants_context:
                result = handler(event, parse_header(header))
            else:
                result = handler(event)
            status, body = STATUS_OK, encode_result(result)
        except Exception:  # the function's error, reported to the caller
            status, body = STATUS_ERROR, traceback.format_exc().encode()
        out.write(struct.pack("<BI", status, len(body)) + body)
        out.flush()


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: husk_worker.py APP.py")
    fd = os.environ.get("HUSK_RESPONSE_FD")
    if fd is None:
        # Stand-alone (tests): frames on stdout, so print() must go elsewhere.
        frames_out = sys.stdout.buffer
        sys.stdout = sys.stderr
    else:
        frames_out = os.fdopen(int(fd), "wb", buffering=0)
    handler = load_handler(sys.argv[1])
    # Initialisation done: the ready frame, before any response.
    frames_out.write(struct.pack("<BI", STATUS_READY, 0))
    frames_out.flush()
    serve(handler, sys.stdin.buffer, frames_out)


if __name__ == "__main__":
    main()
