"""Wall time and peak extra resident memory of one call, for the scale scripts (Linux: reads /proc/self)."""

import gc
import time


def rss_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (``VmRSS`` now, ``VmHWM`` its high-water mark)."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def timed(call):
    """``(result, seconds, peak extra MB)`` of ``call()``: the RSS high-water mark is reset first, so the peak is
    what the call added over what the process held before it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark
    base = rss_mb("VmRSS")
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start, rss_mb("VmHWM") - base
