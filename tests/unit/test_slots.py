"""Limits the API workers of one `serve` share through file locks (GET /mcp streams per token)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from interfaces.slots import SharedSlots, shared_slots

HOLD = """
import sys, time
from interfaces.slots import SharedSlots
release = SharedSlots(sys.argv[1], 2).take("abc")
print("held" if release else "none", flush=True)
time.sleep(60)
"""


def test_at_most_limit_holders_per_key_and_released_slots_are_free_again(tmp_path):
    slots = SharedSlots(str(tmp_path), 2)
    first, second = slots.take("abc"), slots.take("abc")
    assert first and second and slots.take("abc") is None
    assert slots.take("def") is not None  # another key has its own slots
    first()
    third = slots.take("abc")
    assert third is not None and slots.take("abc") is None


def test_slots_are_shared_with_other_processes_and_freed_when_one_dies(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        slots = SharedSlots(str(tmp_path), 2)
        mine = slots.take("abc")
        assert mine is not None and slots.take("abc") is None  # the other process holds the second slot
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 5
        while (again := slots.take("abc")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again is not None
    finally:
        holder.kill()
        holder.wait(10)


def test_only_workers_of_serve_share_slots(tmp_path, monkeypatch):
    monkeypatch.delenv("FLUSIA_WORKER_SLOTS_DIR", raising=False)
    assert shared_slots(4) is None
    monkeypatch.setenv("FLUSIA_WORKER_SLOTS_DIR", str(tmp_path))
    assert isinstance(shared_slots(4), SharedSlots)
