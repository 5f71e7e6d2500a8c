"""A slow disk for the fault suite's subprocesses: with ``FAULTS_SLOW_WRITES=SECONDS`` in the environment and this
folder on ``PYTHONPATH``, every CAM file takes that long to write (``affinitynet.io.save_cam``), so that a stage
which writes its files behind the network still runs long enough for a signal to land mid-stage."""
import os

_delay = float(os.environ.get("FAULTS_SLOW_WRITES", "0") or 0)
if _delay > 0:
    import time

    import affinitynet.io as _io

    _save_cam = _io.save_cam

    def _slow_save_cam(*args, **kwargs):
        time.sleep(_delay)
        return _save_cam(*args, **kwargs)

    _io.save_cam = _slow_save_cam
