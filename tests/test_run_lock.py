"""One writer per run folder (tinyhelen/runlock.py): a second `python train.py` into a busy out_dir
stops with exit 2 and trains nothing while the owner keeps going; after a SIGKILL of the owner,
--resume takes the stale lock over and says so; stale locks of other hosts and earlier boots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_script
from tinyhelen import runlock
from tinyhelen.metrics import read_metrics

TINY = ["--model.n_layer=2", "--model.n_embd=64", "--model.n_head=4", "--model.n_kv_head=2",
        "--model.ffn_hidden=176", "--model.max_seq_len=64", "--seq_len=64", "--batch_size=4",
        "--compile=false", "--dtype=fp32", "--threads=1", "--peak_flops=1e10", "--sample_tokens=0",
        "--warmup_steps=5", "--lr=3e-3", "--min_lr=3e-4", "--eval_steps=1"]


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the owner ended (exit {proc.returncode}) before {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def steps(out_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out_dir / "metrics.jsonl") if "loss" in r]


def test_second_writer_stops_owner_keeps_going_and_resume_takes_over_after_sigkill(leaner_small, tmp_path):
    run = tmp_path / "run"
    common = [f"--data_dir={leaner_small}", f"--out_dir={run}", *TINY, "--log_every=1", "--eval_every=1000",
              "--ckpt_every=10"]
    # The owner: far more steps than the test waits for, so it is still training when the others start.
    log = (tmp_path / "owner.log").open("w")
    owner = subprocess.Popen([sys.executable, "train.py", *common, "--max_steps=100000"], cwd=REPO,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (run / "ckpt.pt").is_file(), "its first checkpoint", owner)
        lock = json.loads((run / runlock.LOCK_NAME).read_text())
        assert lock["pid"] == owner.pid and "train.py" in lock["command"]

        for extra in ([], ["--resume"]):  # a new run, and continuing one: both wait for the owner
            second = run_script("train.py", *common, "--max_steps=50", *extra, check=False)
            assert second.returncode == 2, second.stderr
            assert f"{run} is being written by another run: pid {owner.pid}" in second.stderr
            assert "another --out_dir" in second.stderr and "--resume" in second.stderr
            assert "Traceback" not in second.stderr
            assert "step " not in second.stdout and "parameters" not in second.stdout  # trained nothing

        # The owner kept going: more steps, each logged once (the second writer wrote no rows).
        logged = len(steps(run))
        wait_for(lambda: len(steps(run)) > logged + 5, "more steps of the owner", owner)
        assert owner.poll() is None
        done = steps(run)
        assert done == list(range(1, len(done) + 1))
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        log.close()
    assert (run / runlock.LOCK_NAME).is_file()  # a SIGKILL cannot clean up: the lock is left, stale

    ckpt_step = torch.load(run / "ckpt.pt", weights_only=True)["step"]
    resumed = run_script("train.py", *common, f"--max_steps={ckpt_step + 3}", "--resume")
    assert f"took over the lock of {run} from pid {owner.pid}" in resumed.stderr
    assert f"process {owner.pid} is no longer running" in resumed.stderr
    assert f"resumed from {run / 'ckpt.pt'} at step {ckpt_step}" in resumed.stdout
    assert not (run / runlock.LOCK_NAME).exists()  # released at the end
    assert torch.load(run / "ckpt.pt", weights_only=True)["step"] == ckpt_step + 3


def test_a_busy_folder_stops_every_writing_stage(tmp_path):
    """curriculum.py and inherit.py (and the Trainer's other stages) take the same lock before any
    compute; here the owner is this test process, holding the lock as a run would."""
    run = tmp_path / "run"
    with runlock.hold(run):
        for cmd in (["curriculum.py", f"--data_dir={tmp_path / 'none'}"],
                    ["inherit.py", f"--from={tmp_path / 'none'}", f"--to={tmp_path / 'none.py'}"]):
            bad = run_script(*cmd, f"--out_dir={run}", check=False)
            assert bad.returncode == 2, bad.stderr
            assert f"is being written by another run: pid {os.getpid()}" in bad.stderr
            assert "Traceback" not in bad.stderr
    assert not run.exists()  # created for the lock, nothing written: removed on release


# ------------------------------------------------------------------ the lock itself, in this process

def write_lock(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": 1, "host": runlock.HOST, "boot_id": runlock._boot_id(), "process_start": None,
              "started": "2026-01-01T00:00:00+00:00", "command": "python train.py", **fields}
    path = folder / runlock.LOCK_NAME
    path.write_text(json.dumps(record))
    return path


def test_reentrant_in_one_process_and_released_by_the_last_holder(tmp_path):
    run = tmp_path / "a" / "run"
    outer = runlock.acquire(run)
    inner = runlock.acquire(run)  # train.py holds it, then its Trainer takes it again
    assert inner is outer and (run / runlock.LOCK_NAME).is_file()
    inner.release()
    assert (run / runlock.LOCK_NAME).is_file()
    (run / "ckpt.pt").write_bytes(b"x")
    outer.release()
    assert not (run / runlock.LOCK_NAME).exists() and (run / "ckpt.pt").is_file()


def test_a_lock_that_was_never_used_leaves_no_folders_behind(tmp_path):
    """A stage that stops before writing (a bad flag found after the lock) leaves the disk as it was:
    the run folder and every parent the lock created are removed, a folder that was there stays."""
    (tmp_path / "kept").mkdir()
    with runlock.hold(tmp_path / "kept" / "new" / "run"):
        assert (tmp_path / "kept" / "new" / "run" / runlock.LOCK_NAME).is_file()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]
    with runlock.hold(tmp_path / "kept" / "used" / "run"):
        (tmp_path / "kept" / "used" / "run" / "ckpt.pt").write_bytes(b"x")
    assert (tmp_path / "kept" / "used" / "run" / "ckpt.pt").is_file()
    assert not (tmp_path / "kept" / "used" / "run" / runlock.LOCK_NAME).exists()


def test_other_ranks_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with runlock.hold(tmp_path / "run"):
        assert not (tmp_path / "run").exists()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "run", pid=child.pid)
        with pytest.raises(runlock.RunFolderBusy, match=f"pid {child.pid} on this machine"):
            runlock.acquire(tmp_path / "run")
    finally:
        child.kill()
        child.wait()
    # gone now: taken over (and its record's pid is not one that runs)
    with runlock.hold(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / runlock.LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("fields, age_s, reason", [
    ({"boot_id": "an-earlier-boot", "pid": os.getpid()}, 0, "this machine has restarted since"),
    ({"host": "elsewhere", "pid": os.getpid()}, runlock.STALE_AFTER_S + 60, "last refreshed 11 minutes ago"),
    # this pid, but a process started at another time: the owner's pid was reused
    ({"pid": os.getpid(), "process_start": -5}, 0, f"process {os.getpid()} is no longer running"),
])
def test_stale_locks_are_taken_over_with_a_message(tmp_path, capsys, fields, age_s, reason):
    path = write_lock(tmp_path / "run", **fields)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    with runlock.hold(tmp_path / "run"):
        assert json.loads(path.read_text())["started"] != "2026-01-01T00:00:00+00:00"
    err = capsys.readouterr().err
    assert f"took over the lock of {tmp_path / 'run'}" in err and reason in err


def test_another_hosts_fresh_lock_is_respected(tmp_path):
    write_lock(tmp_path / "run", host="elsewhere")
    with pytest.raises(runlock.RunFolderBusy, match="pid 1 on host elsewhere"):
        runlock.acquire(tmp_path / "run")


def test_an_unreadable_lock_file_is_taken_over(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runlock.LOCK_NAME).write_text("not json")
    with runlock.hold(tmp_path / "run"):
        pass
    assert "not a lock record" in capsys.readouterr().err
