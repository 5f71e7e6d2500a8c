"""Helpers of the fault-injection suite: the FAST settings, CLI drivers (subprocess and in-process), checks."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from affinitynet import cli

PRESET = "synthetic_cpu"
N_TRAIN, N_VAL, SIZE = 32, 8, 64

# Small, fast and deterministic: 1 thread, no DataLoader workers, no process pools, CPU.
FAST = [
    f"data.synthetic.train={N_TRAIN}", f"data.synthetic.val={N_VAL}", f"data.synthetic.size={SIZE}", "data.synthetic.seed=0",
    "cam.epochs=2", "affinitynet.epochs=2", "segmentation.epochs=2",
    "cam.batch_size=4", "affinitynet.batch_size=4", "segmentation.batch_size=4",
    "cam.crop_size=64", "affinitynet.crop_size=64", "segmentation.crop_size=64",
    "cam.resize_long=[56,72]", "affinitynet.resize_long=[56,72]",
    "cam.scales=[1.0,0.5]", "cam.overlays=0", "segmentation.test_scales=[1.0]",
    "affinity_labels.workers=1", "random_walk.workers=1", "eval.report_images=2",
    "runtime.device=cpu", "runtime.threads=1", "runtime.num_workers=0", "runtime.progress=false",
    "runtime.seed=0", "data.synthetic.classes=5",
]


def set_args(root, *extra) -> list[str]:
    """``--set`` arguments: FAST, the dataset root, then ``extra`` (later ones win)."""
    out = []
    for item in [*FAST, f"data.root={root}", *extra]:
        out += ["--set", item]
    return out


def python_cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m affinitynet ARGS`` in a subprocess with the interpreter running the tests."""
    return subprocess.run([sys.executable, "-m", "affinitynet", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=_env())


SLOW_DISK = Path(__file__).parent / "slow_disk"  # sitecustomize.py: FAULTS_SLOW_WRITES=SECONDS slows CAM writes


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    if extra:
        env.update(extra)
        if "FAULTS_SLOW_WRITES" in extra:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SLOW_DISK), env.get("PYTHONPATH", "")) if p)
    return env


def run_cmd(run_dir, root, *extra_sets, args=()) -> list[str]:
    """The argument list of ``affinitynet run PRESET --out RUN_DIR --set ... ARGS``."""
    return ["run", PRESET, "--out", str(run_dir), *set_args(root, *extra_sets), *map(str, args)]


def in_process(argv, capsys) -> tuple[int, str, str]:
    """``affinitynet.cli.main(argv)`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(rc: int, err: str) -> str:
    """Assert the command failed with a one-line error and no traceback; return that line."""
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "no error message on stderr"
    last = lines[-1]
    assert last.startswith("affinitynet: error: "), err
    assert sum(ln.startswith("affinitynet: error:") for ln in lines) == 1, err
    record = os.environ.get("FAULTS_MESSAGES")  # collect the messages for docs/errors.md
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{last}\n")
    return last


def temp_files(run_dir) -> list[Path]:
    """Temporary files left by an atomic write (``.NAME.*.tmp*``) anywhere under ``run_dir``."""
    return sorted(p for p in Path(run_dir).rglob("*") if p.is_file() and ".tmp" in p.name)


def file_bytes(folder) -> dict[str, bytes]:
    """{relative path: bytes} of every file under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(path) -> dict[str, torch.Tensor]:
    """The model state dict of one of our checkpoints."""
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b) -> None:
    """Every tensor (parameters and BatchNorm buffers) of two checkpoints is exactly equal."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = {k: float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if not torch.equal(wa[k], wb[k])}
    assert not diff, f"weights differ: {diff}"


def copy_run(src, dst) -> Path:
    """A copy of a run directory (its config keeps pointing at the same dataset)."""
    shutil.copytree(src, dst)
    return Path(dst)


def kill_when(argv, run_dir, ready, *, timeout=240.0, poll=0.003) -> tuple[int, float]:
    """Start ``python -m affinitynet ARGV``, SIGKILL it as soon as ``ready(run_dir)`` holds; (exit code, seconds).

    Fails if the process ends by itself before ``ready`` ever held.
    """
    log = Path(run_dir).parent / f"{Path(run_dir).name}.killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "affinitynet", *map(str, argv)], stdout=f, stderr=f,
                                env=_env())
    t0 = time.time()
    try:
        while proc.poll() is None:
            if ready(Path(run_dir)):
                proc.send_signal(signal.SIGKILL)
                break
            if time.time() - t0 > timeout:
                raise AssertionError(f"{argv}: condition not reached in {timeout} s")
            time.sleep(poll)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == -signal.SIGKILL, f"the process ended by itself (rc {rc}) before it could be killed:\n" \
                                  f"{log.read_text()}"
    return rc, time.time() - t0


def start_cli(argv, log, *, new_session: bool = False, env: dict | None = None) -> subprocess.Popen:
    """``python -m affinitynet ARGV`` in the background, stdout and stderr into the file ``log``.

    ``new_session``: in a process group of its own, so that a signal can go to the whole group (as a
    terminal's Ctrl-C does) without reaching the tests. ``env``: extra environment variables (``_env``).
    """
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "affinitynet", *map(str, argv)], stdout=f, stderr=f,
                                env=_env(env), start_new_session=new_session)


def wait_for(condition, *, timeout=240.0, poll=0.003, what="condition") -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout`` seconds."""
    t0 = time.time()
    while not condition():
        if time.time() - t0 > timeout:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(poll)


def children_of(pid: int) -> list[int]:
    """Pids of the live child processes of ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_when(argv, run_dir, ready, sig, *, group=False, timeout=240.0, poll=0.003, env=None):
    """Start ``python -m affinitynet ARGV`` and send it ``sig`` as soon as ``ready(run_dir)`` holds (to its whole
    process group with ``group``, as a terminal's Ctrl-C does).

    Returns (exit code, seconds from the signal to the exit, its output, pids of its children at the signal).
    Fails if the process ends by itself before ``ready`` ever held.
    """
    log = Path(run_dir).parent / f"{Path(run_dir).name}.signalled.log"
    proc = start_cli(argv, log, new_session=group, env=env)
    try:
        wait_for(lambda: proc.poll() is not None or ready(Path(run_dir)), timeout=timeout, poll=poll,
                 what=f"{argv}: ready")
        assert proc.poll() is None, f"the process ended by itself (rc {proc.returncode}) before the signal:\n" \
                                    f"{log.read_text()}"
        kids = children_of(proc.pid)
        t0 = time.time()
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        rc = proc.wait(timeout=120)
        seconds = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, seconds, log.read_text(), kids


def first_name(root, split="train") -> str:
    """The first image id of a split."""
    return (Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]


def finite_state(path) -> bool:
    """Whether every floating tensor of a checkpoint's model is finite."""
    return all(bool(torch.isfinite(v).all()) for v in weights(path).values() if v.is_floating_point())

