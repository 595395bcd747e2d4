"""Lay out a Python root filesystem tree for `husk image build`, from this machine's own
python3: the interpreter, the shared libraries it and its extension modules load (found
with ldd), and the standard-library modules the worker shim and the app import at
start-up (found by importing them and reading sys.modules), plus the `encodings`
package the interpreter needs to start. No hand-kept module list.

    /usr/bin/python3 runtimes/python/build-rootfs.py OUT_DIR APP.py

(run it with the interpreter the image should hold: Debian's /usr/bin/python3)

Writes OUT_DIR/usr/..., OUT_DIR/husk/runtime/husk_worker.py and OUT_DIR/husk/app/<APP>.
Then: husk image build OUT_DIR --agent husk-agent --function /usr/bin/python3
--mode worker --arg=-S --arg=-B --arg=/husk/runtime/husk_worker.py
--arg=/husk/app/<APP> --env PYTHONHOME=/usr --env LD_LIBRARY_PATH=... (see the e2e
test tests/tests/block.rs).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = os.path.realpath(sys.executable)


def discover_modules(app):
    """Files of every module loaded when the shim imports the app (in a child python)."""
    code = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import husk_worker\n"
        f"husk_worker.load_handler({app!r})\n"
        "import encodings\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    if f: print(f)\n"
    )
    out = subprocess.run([PYTHON, "-S", "-B", "-c", code], check=True, capture_output=True, text=True)
    files = set()
    stdlib = os.path.dirname(os.__file__)
    for f in out.stdout.split():
        f = os.path.abspath(f)
        if not f.startswith(stdlib + os.sep):
            continue  # the shim and the app are copied separately
        files.add(f)
        if f.endswith(".py"):
            pyc = importlib.util.cache_from_source(f)
            if os.path.exists(pyc):
                files.add(pyc)
    # The whole encodings package: the codec for any locale is looked up at start-up.
    enc = os.path.join(stdlib, "encodings")
    for root, _, names in os.walk(enc):
        for n in names:
            files.add(os.path.join(root, n))
    # The landmark the interpreter checks to find its standard library.
    files.add(os.path.join(stdlib, "os.py"))
    return files


def ldd(path):
    """Shared objects `path` loads, as (name the loader looks up, real file)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    deps = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                deps.append(target)
        elif parts and parts[0].startswith("/"):
            deps.append(parts[0])  # the dynamic loader
    return deps


def copy(src, out):
    dst = os.path.join(out, src.lstrip("/"))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy2(os.path.realpath(src), dst)


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: build-rootfs.py OUT_DIR APP.py")
    out, app = sys.argv[1], os.path.abspath(sys.argv[2])
    files = discover_modules(app)
    binaries = [PYTHON] + [f for f in files if f.endswith(".so")]
    libs = set()
    for b in binaries:
        libs.update(ldd(b))
    # The interpreter itself goes in as the function (/husk/fn/python3).
    for f in sorted(files | libs):
        copy(f, out)
    for src, dest in [(os.path.join(HERE, "husk_worker.py"), "husk/runtime/husk_worker.py"),
                      (app, os.path.join("husk/app", os.path.basename(app)))]:
        d = os.path.join(out, dest)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copy2(src, d)
    print(f"{len(files)} stdlib files, {len(libs)} shared libraries, interpreter {PYTHON}")


if __name__ == "__main__":
    main()
