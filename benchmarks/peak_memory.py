"""The benchmarks' one measure of CPU memory: the kernel's high-water mark of a process's resident
memory (``VmHWM`` in /proc/self/status, Linux), reset where a measurement starts.

Kept free of torch and of the project's packages, because it also runs as a small launcher that
measures a whole command as a user runs it::

    python benchmarks/peak_memory.py RESULT.json SCRIPT [ARGS...]

runs ``python SCRIPT ARGS`` in this process (same ``sys.argv`` and ``sys.path[0]``, so a script of
another checkout imports its own tree), then writes {"peak_bytes": VmHWM at the end, "exit_code",
and "cuda_peak_bytes" when the script used CUDA} to RESULT.json and exits with the script's code.
A fresh process's high-water mark counts its whole life (interpreter, imports, the work), which is
what the user's machine must hold; ``ru_maxrss`` would not do: on Linux it keeps the high-water
mark of the address space the process was forked from (its parent's) until exec.
"""

import ctypes
import json
import os
import runpy
import sys


def _status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"/proc/self/status has no {field} line")


def resident_high_water():
    """This process's peak resident memory in bytes since it started or since the last reset."""
    return _status_bytes("VmHWM")


def reset_resident_high_water():
    """Start a new high-water mark at the current resident memory; returns that memory (bytes), or
    None where the kernel offers no reset (not Linux, or Linux before 4.0).

    Freed heap memory is first handed back to the system (glibc ``malloc_trim``), so that the work
    measured next cannot reuse pages already counted in the start value.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size of this process
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _run_script(result_file, script, *args):
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)  # what the interpreter would print for sys.exit(message)
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    result = {"peak_bytes": resident_high_water(), "exit_code": code}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    with open(result_file, "w") as out:
        json.dump(result, out)
    return code


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(f"error: usage: python {sys.argv[0]} RESULT.json SCRIPT [ARGS...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(_run_script(*sys.argv[1:]))
