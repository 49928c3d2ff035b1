"""Run a command with one directory on a small disk of its own: a tmpfs in a private mount namespace.

    unshare --map-root-user --mount python tests/small_disk.py SPEC.json

SPEC: {"mount": directory, "size": bytes, "command": [...], "cwd": directory, "copy_to": directory,
       "fill_after": [file names in the mount] or null, "leave_free": bytes}

The tmpfs gives the command real "No space left on device" errors from the kernel. With fill_after,
once those files exist the disk is filled up to `leave_free` bytes, as if another program had
taken the space mid-run. The mount lives only as long as this process: before leaving, it copies
what the command left there to copy_to and writes copy_to.json (exit status, stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 1 << 16


def fill(mount: Path, leave_free: int) -> None:
    """Write a filler file until the disk is full, then give back `leave_free` bytes."""
    filler = mount / ".filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * CHUNK)
        except OSError:
            pass
        for size in (4096, 1):  # the last part of the disk, in pages, then bytes
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
        if leave_free:
            handle.truncate(max(0, handle.seek(0, os.SEEK_END) - leave_free))


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    mount = Path(spec["mount"])
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['size']}", "tmpfs", str(mount)], check=True)
    stderr_path = Path(spec["copy_to"] + ".stderr")
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(spec["command"], cwd=spec["cwd"], stdout=subprocess.DEVNULL, stderr=stderr)
    filled = False
    if spec.get("fill_after"):
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if all((mount / name).is_file() for name in spec["fill_after"]):
                fill(mount, spec.get("leave_free", 0))
                filled = True
                break
            time.sleep(0.002)
    status = process.wait(timeout=300)
    (mount / ".filler").unlink(missing_ok=True)
    shutil.copytree(mount, spec["copy_to"], symlinks=True)
    result = {"status": status, "stderr": stderr_path.read_text(), "filled": filled}
    Path(spec["copy_to"] + ".json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
