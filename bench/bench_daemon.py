"""Benchmark of the real daemon (`astrod run` in a subprocess) on one synthetic night: peak memory and time per frame.

It writes one synthetic mono night with ``astrod.demo.synth`` (5 biases, 5 darks of 60 s, 5 flats in L, and
``--lights`` lights of one target in L with shifts of a few pixels and rotations under 1°) in a child process,
starts ``astrod run`` on a fresh observatory folder (watch -> library -> live stack, with the journal, the
checkpoints, the previews and the web server), publishes the calibration frames into the watched folder, waits
for the masters, publishes the lights one every ``--interval`` seconds (or all at once with ``--burst``), closes
the session with ``astrod session close --all``, waits for the final stack and stops the daemon with SIGTERM.

Meanwhile it samples the daemon's /proc/<pid>/status every 50 ms. Peak RSS is the kernel's own VmHWM; after the
library is built the bench resets it (``echo 5 > /proc/<pid>/clear_refs``) so that the live-stacking peak is
measured apart from the library build's. It prints the generation time, the library build time, frames stacked
and rejected, the per-frame ms (the session worker's ``ms_total``: read + calibrate + register + stack, without
the checkpoint and preview that follow) and the latency from a file published to its frame stacked, the peak RSS
with its anon/file split, and the NCOMBINE of the final stack. Figures are printed, never asserted.

    .venv/bin/python bench/bench_daemon.py --size 26 --lights 20
    .venv/bin/python bench/bench_daemon.py --size 3.1 --lights 10 --interval 1      # a quick check
    .venv/bin/python bench/bench_daemon.py --size 26 --workdir /tmp/astrod-bench-daemon   # night kept for the next run
    .venv/bin/python bench/bench_daemon.py --size 26 --burst --no-web --library-memory-cap 1024

The machine should be quiet: the load average at the start and the end is printed with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

SIZES = {"3.1": (2048, 1536), "12.6": (4096, 3072), "26": (6248, 4176)}
FULL_AREA = 6248 * 4176
EXPOSURE = 60.0
TARGET = "NGC 891"
FILTER = "L"
N_CALIBRATION = 5
SAMPLE_SECONDS = 0.05
PREVIEW_EVERY = 5  # the daemon's default [stack] preview_every_frames, which the bench's config keeps
STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


# ------------------------------------------------------------------------------------------ synthetic night


def generate(folder: Path, width: int, height: int, *, n_lights: int, stars: int, seed: int) -> dict[str, Any]:
    """Write the night's calibration frames and lights into ``folder``; returns the seconds spent per step."""
    import numpy as np

    from astrod.demo import synth
    from astrod.model import Transform

    area = width * height / FULL_AREA
    start = datetime.fromisoformat("2026-11-21T19:00:00+00:00")
    common: dict[str, Any] = {"gain": 100, "offset": 50, "temperature": -10.0, "set_temperature": -10.0,
                              "camera": "ZWO ASI2600MM Pro"}
    timings: dict[str, Any] = {}
    t0 = time.perf_counter()
    sensor = synth.Sensor(width=width, height=height, seed=seed, hot_pixels=max(50, round(2000 * area)), dust=2)
    timings["sensor_s"] = time.perf_counter() - t0

    def put(kind: str, relative: str, make: Any, **header: Any) -> None:
        t = time.perf_counter()
        synth.write_fits(folder / "calibration" / relative, make(), kind=kind, object=None, **header, **common)
        timings.setdefault(f"{kind}_s", []).append(time.perf_counter() - t)

    for i in range(N_CALIBRATION):
        when = start + timedelta(seconds=i)
        put("bias", f"Bias/bias_{i:03d}.fits", lambda i=i: sensor.bias(seed=100 + i), exposure=0.0001,
            filter=None, date_obs=when)
        put("dark", f"Darks/dark_60s_{i:03d}.fits",
            lambda i=i: sensor.dark(exposure=EXPOSURE, temperature=-10.0, seed=200 + i), exposure=EXPOSURE,
            filter=None, date_obs=when + timedelta(seconds=60))
        put("flat", f"Flats/{FILTER}/flat_{FILTER}_{i:03d}.fits",
            lambda i=i: sensor.flat(level=20000.0, seed=300 + i), exposure=2.0, filter=FILTER,
            date_obs=when + timedelta(seconds=600))
    catalogue = synth.make_catalogue(width=width, height=height, n_stars=max(150, round(stars * area)),
                                     seed=seed + 1, margin=40)
    rng = np.random.default_rng(seed)
    for i in range(n_lights):
        t = time.perf_counter()
        dx, dy = (0.0, 0.0) if i == 0 else (float(v) for v in rng.uniform(-5.0, 5.0, size=2))
        rotation = 0.0 if i == 0 else float(rng.uniform(-0.5, 0.5))
        transform = Transform.similarity(dx=dx, dy=dy, rotation_deg=rotation)
        scene, _ = synth.render_stars(width=width, height=height, catalogue=catalogue, transform=transform,
                                      fwhm=float(rng.uniform(2.9, 3.2)), sky=150.0)
        data = sensor.light(scene, exposure=EXPOSURE, temperature=-10.0, seed=1000 + i)
        del scene
        synth.write_fits(folder / "lights" / f"{TARGET.replace(' ', '')}_{FILTER}_{i:04d}.fits", data,
                         kind="light", exposure=EXPOSURE, filter=FILTER, object=TARGET, ra=35.64, dec=42.35,
                         date_obs=start + timedelta(seconds=3600 + 70 * i), **common)
        timings.setdefault("light_s", []).append(time.perf_counter() - t)
    manifest = {"width": width, "height": height, "lights": n_lights, "stars": stars, "seed": seed,
                "timings": timings}
    (folder / "night.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def night_ready(folder: Path, width: int, height: int, *, n_lights: int, stars: int) -> bool:
    try:
        manifest = json.loads((folder / "night.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(manifest.get("width") == width and manifest.get("height") == height
                and manifest.get("lights", 0) >= n_lights and manifest.get("stars") == stars)


# ------------------------------------------------------------------------------------------ observatory


@dataclass(frozen=True)
class Observatory:
    root: Path

    @property
    def night(self) -> Path:
        return self.root / ".night"

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def stacks(self) -> Path:
        return self.root / "stacks"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def library(self) -> Path:
        return self.root / "library"

    @property
    def config(self) -> Path:
        return self.root / "astrod.toml"

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    def reset(self) -> None:
        """Remove what an earlier run of this bench left (never the synthetic night)."""
        for folder in (self.capture, self.stacks, self.state, self.library):
            shutil.rmtree(folder, ignore_errors=True)
        for path in (self.config, self.log):
            path.unlink(missing_ok=True)

    def write_config(self, *, web_port: int | None, library_cap_mb: int | None) -> None:
        library = f"[library]\nmemory_cap_mb = {library_cap_mb}\n" if library_cap_mb is not None else ""
        web = (f'[web]\nenabled = true\nhost = "127.0.0.1"\nport = {web_port}\n' if web_port is not None
               else "[web]\nenabled = false\n")
        # No [site]: without a latitude no dawn is scheduled, so nothing closes the session but the bench.
        self.config.write_text(f"""# written by bench/bench_daemon.py
[paths]
watch = ["capture"]
output = "stacks"
state = "state"
library = "library"
[watch]
stable_seconds = 1.0
[session]
idle_minutes = 600.0
[log]
level = "info"
format = "json"
[solve]
# the synthetic skies cannot be solved: a blind solve would add up to 2 min of CPU to what is measured here
enabled = false
{library}{web}""", encoding="utf-8")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def publish(source: Path, target: Path) -> float:
    """Copy under a temporary name (ignored by the watcher), then rename into place; returns the time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return time.time()


def astrod_command() -> list[str]:
    exe = Path(sys.executable).parent / "astrod"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "astrod"]


# ------------------------------------------------------------------------------------------ measuring


def read_proc_status(pid: int) -> dict[str, int] | None:
    """The daemon's memory figures in KiB, or None when it is gone (or a zombie without them)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_KEYS:
            values[key] = int(rest.split()[0])
    return values if "VmHWM" in values else None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Sampler:
    """Samples /proc/<pid>/status and follows the daemon's JSON log in a thread of its own."""

    pid: int
    log: Path
    checkpoints: tuple[int, ...]
    phase: str = "start"
    last: dict[str, int] = field(default_factory=dict)
    peak_sample: dict[str, int] = field(default_factory=dict)
    phase_peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    at_checkpoint: dict[int, dict[str, int]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    frames_done: int = 0
    cpu_s: float | None = None
    samples: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._offset = 0
        self._partial = ""
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._follow_log()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def sample(self) -> dict[str, int] | None:
        values = read_proc_status(self.pid)
        if values is None:
            return None
        cpu = cpu_seconds(self.pid)
        values["at_ms"] = round(time.time() * 1e3)  # to find what the daemon was doing at a peak
        with self._lock:
            self.samples += 1
            self.last = values
            if cpu is not None:
                self.cpu_s = cpu
            if values.get("VmRSS", 0) > self.peak_sample.get("VmRSS", -1):
                self.peak_sample = dict(values)
            peak = self.phase_peaks.get(self.phase)
            if peak is None or values.get("VmRSS", 0) > peak.get("VmRSS", -1):
                self.phase_peaks[self.phase] = dict(values)
        return values

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            values = self.sample()
            self._follow_log(values)

    def _follow_log(self, values: dict[str, int] | None = None) -> None:
        try:
            with self.log.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk.decode("utf-8", errors="replace")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "unparsed", "text": line}
            if not isinstance(event, dict):
                continue
            with self._lock:
                self.events.append(event)
                if event.get("event") in ("frame_stacked", "frame_rejected"):
                    self.frames_done += 1
                    if self.frames_done in self.checkpoints and values is not None:
                        self.at_checkpoint[self.frames_done] = dict(values)

    def find(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name]


def reset_peak(pid: int) -> bool:
    """Reset the kernel's VmHWM of ``pid`` to its current RSS (Linux ≥ 4.0); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------ running the daemon


class DaemonFailed(RuntimeError):
    pass


def wait_for(what: Any, *, timeout: float, message: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonFailed(f"the daemon exited with {proc.returncode} while waiting for {message}:\n"
                               + log_tail(log))
        result = what()
        if result:
            return result
        time.sleep(0.1)
    raise DaemonFailed(f"timed out after {timeout:.0f} s waiting for {message}:\n" + log_tail(log))


def log_tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checkpoints_for(n: int) -> tuple[int, ...]:
    return tuple(sorted({1, n, *range(10, n + 1, 10)}))


def run_bench(obs: Observatory, *, n_lights: int, interval: float, burst: bool, web: bool,
              library_cap_mb: int | None) -> dict[str, Any]:
    """Run the daemon on the night in ``obs.night``; returns everything measured."""
    calibration = sorted((obs.night / "calibration").rglob("*.fits"))
    lights = sorted((obs.night / "lights").glob("*.fits"))[:n_lights]
    obs.reset()
    port = free_port() if web else None
    obs.write_config(web_port=port, library_cap_mb=library_cap_mb)
    check = subprocess.run([*astrod_command(), "config", "check", "--config", str(obs.config)], capture_output=True,
                           text=True, check=False)
    if check.returncode != 0:
        raise DaemonFailed(f"astrod config check failed:\n{check.stdout}{check.stderr}")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    out: dict[str, Any] = {"config_check": check.stdout.strip(), "web_port": port}
    with obs.log.open("ab") as log_handle:
        proc = subprocess.Popen([*astrod_command(), "run", "--config", str(obs.config)], stdout=log_handle,
                                stderr=subprocess.STDOUT, env=env, cwd=obs.root, start_new_session=True)
    sampler = Sampler(pid=proc.pid, log=obs.log, checkpoints=checkpoints_for(n_lights))
    sampler.start()
    status_path = obs.state / "status.json"
    try:
        t_start = time.monotonic()
        wait_for(lambda: (read_json(status_path) or {}).get("pid") == proc.pid, timeout=120,
                 message="the daemon's first status", proc=proc, log=obs.log)
        out["startup_s"] = time.monotonic() - t_start
        out["rss_idle"] = dict(sampler.last)

        # calibration frames, quickly one after the other, as a capture program's calibration run would
        sampler.set_phase("library")
        for path in calibration:
            publish(path, obs.capture / path.relative_to(obs.night / "calibration"))
        t_calibration = time.time()

        def masters_ready() -> dict[str, Any] | None:
            failed = sampler.find("master_failed") + sampler.find("library_update_failed")
            if failed:
                raise DaemonFailed("the library build failed: " + "; ".join(
                    f"{e.get('kind', 'library')}: {e.get('reason')}" for e in failed))
            status = read_json(status_path) or {}
            masters = status.get("library", {}).get("masters") or {}
            if all(masters.get(k) for k in ("bias", "dark", "flat")) and not status.get("progress"):
                return status
            return None

        status = wait_for(masters_ready, timeout=1800, message="the masters (bias, dark, flat)", proc=proc,
                          log=obs.log)
        out["masters"] = status["library"]["masters"]
        updated = sampler.find("library_updated")
        seen = sampler.find("calibration_frame_seen")
        out["library_wall_s"] = (parse_time(updated[-1]["timestamp"]) if updated else time.time()) - t_calibration
        if updated and seen:
            out["library_after_last_seen_s"] = parse_time(updated[-1]["timestamp"]) - parse_time(seen[-1]["timestamp"])
        written = sampler.find("master_written")
        out["masters_written"] = [(e.get("kind"), e.get("n", e.get("bad")), e.get("status")) for e in written]
        values = sampler.sample() or {}
        out["rss_library"] = dict(sampler.phase_peaks.get("library", {}))
        out["hwm_library_kib"] = values.get("VmHWM", 0)
        out["hwm_reset"] = reset_peak(proc.pid)
        if web:
            out["web_status_ok"] = _web_ok(port)

        # lights: one every `interval` seconds (or all at once), like a camera finishing exposures
        sampler.set_phase("lights")
        published: dict[str, float] = {}
        t0 = time.monotonic()
        for i, path in enumerate(lights):
            if not burst:
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if proc.poll() is not None:
                raise DaemonFailed(f"the daemon exited with {proc.returncode}:\n" + log_tail(obs.log))
            target = obs.capture / "Lights" / TARGET / FILTER / path.name
            published[str(target)] = publish(path, target)
        out["publish_s"] = time.monotonic() - t0
        wait_for(lambda: sampler.frames_done >= len(lights), timeout=600 + 120 * len(lights),
                 message=f"{len(lights)} lights stacked or rejected", proc=proc, log=obs.log)
        out["lights_s"] = time.monotonic() - t0
        checkpoints = sorted(obs.state.glob("sessions/*/checkpoint-*.npz"))
        out["checkpoint_bytes"] = checkpoints[-1].stat().st_size if checkpoints else None
        values = sampler.sample() or {}
        out["hwm_lights_kib"] = values.get("VmHWM", 0)

        # close the session: final stack, frames table, session.json
        sampler.set_phase("close")
        t_close = time.monotonic()
        close = subprocess.run([*astrod_command(), "session", "close", "--all", "--config", str(obs.config)],
                               capture_output=True, text=True, check=False, timeout=120)
        if close.returncode != 0:
            raise DaemonFailed(f"astrod session close failed:\n{close.stdout}{close.stderr}")
        closed = wait_for(lambda: sampler.find("session_closed"), timeout=1800, message="the session's close",
                          proc=proc, log=obs.log)
        output = Path(str(closed[-1].get("output")))
        for name in ("stack.fits", "frames.csv", "session.json"):
            wait_for(lambda name=name: (output / name).is_file(), timeout=60, message=f"{output / name}", proc=proc,
                     log=obs.log)
        out["close_s"] = time.monotonic() - t_close
        out["output"] = str(output)
        values = sampler.sample() or {}
        out["hwm_close_kib"] = values.get("VmHWM", 0)
        if web:
            out["web_status_ok"] = out.get("web_status_ok", False) and _web_ok(port)

        sampler.set_phase("stop")
        out["cpu_s"] = sampler.cpu_s
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out["exit_code"] = proc.wait(timeout=180)
        out["stop_s"] = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        sampler.stop()
    out["final"] = dict(sampler.last)
    out["peak_sample"] = dict(sampler.peak_sample)
    out["phase_peaks"] = {k: dict(v) for k, v in sampler.phase_peaks.items()}
    out["at_checkpoint"] = {k: dict(v) for k, v in sampler.at_checkpoint.items()}
    out["samples"] = sampler.samples
    out["frame_events"] = [e for e in sampler.events if e.get("event") in ("frame_stacked", "frame_rejected")]
    out["latency_s"] = [parse_time(e["timestamp"]) - published[e["frame"]] for e in out["frame_events"]
                        if e.get("frame") in published]
    out["events"] = list(sampler.events)
    out["problems"] = [e for e in sampler.events if e.get("level") in ("warning", "error", "critical")
                       or e.get("event") == "unparsed"]
    out["journal"] = journal_lights(obs.state / "journal.sqlite")
    for row in out["journal"]:
        row["published"] = published.get(row["path"])
    out["session"] = read_json(Path(out["output"]) / "session.json") if "output" in out else None
    if "output" in out:
        from astropy.io import fits

        header = fits.getheader(Path(out["output"]) / "stack.fits")
        out["ncombine"] = header.get("NCOMBINE")
        out["stack_shape"] = (header.get("NAXIS1"), header.get("NAXIS2"), header.get("BITPIX"))
    return out


def _web_ok(port: int | None) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as response:
            return bool(response.status == 200 and json.loads(response.read()).get("running"))
    except (OSError, ValueError):
        return False


def journal_lights(path: Path) -> list[dict[str, Any]]:
    """Every light's row in the journal (status, reason, metrics), read after the daemon has exited."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT path, status, reason, metrics, seen_at, updated_at FROM files "
                          "WHERE kind = 'light' ORDER BY arrival")
        return [{"path": p, "status": s, "reason": r, "metrics": json.loads(m) if m else {},
                 "seen": parse_time(seen), "committed": parse_time(updated)} for p, s, r, m, seen, updated in rows]
    finally:
        db.close()


# ------------------------------------------------------------------------------------------ report


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


def split(values: dict[str, int], events: list[dict[str, Any]] | None = None) -> str:
    if not values:
        return "(no sample)"
    text = (f"RSS {mib(values.get('VmRSS'))} = anon {mib(values.get('RssAnon'))} + file {mib(values.get('RssFile'))}"
            f" + shmem {mib(values.get('RssShmem'))}")
    if events and "at_ms" in values:
        at = values["at_ms"] / 1e3
        later = [e for e in events if "timestamp" in e and parse_time(e["timestamp"]) >= at]
        if later:
            e = later[0]
            what = e.get("kind") or (Path(str(e["frame"])).name if e.get("frame") else None)
            text += (f" (next log event {parse_time(e['timestamp']) - at:.2f} s later: {e.get('event')}"
                     + (f" {what}" if what else "") + ")")
    return text


def ms_stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.0f} ms, worst {max(values):.0f} ms"


def report(r: dict[str, Any], *, n_lights: int, interval: float, burst: bool) -> None:
    print(f"  daemon up in {r['startup_s']:.1f} s; idle: {split(r['rss_idle'])}")
    print(f"  {r['config_check']}; web {'on port ' + str(r['web_port']) if r['web_port'] else 'disabled'}"
          + (f" (/api/status answered: {r.get('web_status_ok')})" if r["web_port"] else ""))
    lib_after = r.get("library_after_last_seen_s")
    print(f"  library: masters {r['masters']} ready {r['library_wall_s']:.1f} s after the last calibration frame was "
          f"published" + (f" ({lib_after:.1f} s after the daemon saw it, of which ~5 s is its batching wait)"
                          if lib_after is not None else ""))
    for kind, n, status in r["masters_written"]:
        print(f"    master {kind}: {n} {'bad pixels' if kind == 'badpixels' else 'frames'}, {status}")
    print(f"  library peak: VmHWM {mib(r['hwm_library_kib'])}; largest sample {split(r['rss_library'])}")
    print(f"  peak RSS reset after the library: {'yes' if r['hwm_reset'] else 'NO (clear_refs not allowed)'}")
    lights = r["journal"]
    stacked = [x for x in lights if x["status"] == "stacked"]
    rejected = [x for x in lights if x["status"] != "stacked"]
    mode = "all at once (--burst)" if burst else f"one every {interval:g} s"
    print(f"  lights: {len(lights)} of {n_lights} journaled, {len(stacked)} stacked, {len(rejected)} rejected; "
          f"published {mode} in {r['publish_s']:.1f} s, all done {r['lights_s']:.1f} s after the first")
    for x in rejected[:5]:
        print(f"    rejected {Path(x['path']).name}: {x['status']}: {x['reason']}")
    totals = [float(x["metrics"]["ms_total"]) for x in lights if "ms_total" in x["metrics"]]
    print(f"  per frame (worker ms_total: read + calibrate + detect + register + warp + accumulate): "
          f"{ms_stats(totals)}; without the first (reference) frame: {ms_stats(totals[1:])}"
          + ("" if burst or not totals or max(totals) < interval * 1e3 else f"  <-- above the {interval:g} s interval"))
    stages = sorted({k for x in lights for k in x["metrics"] if k.startswith("ms_") and k != "ms_total"})
    for stage in stages:
        values = [float(x["metrics"][stage]) for x in lights if isinstance(x["metrics"].get(stage), int | float)]
        print(f"    {stage[3:]:<12} {ms_stats(values)}")
    if totals:
        reads = [float(x["metrics"]["ms_total"]) - sum(float(x["metrics"].get(s) or 0.0) for s in stages)
                 for x in lights if "ms_total" in x["metrics"]]
        print(f"    {'read+rest':<12} {ms_stats(reads)}")
    lat = [v * 1e3 for v in r["latency_s"]]
    print(f"  published -> frame_stacked logged (watcher, router, queue, processing, checkpoint): {ms_stats(lat)}")
    timed = [x for x in lights if x.get("published") is not None and "ms_total" in x["metrics"]]
    seen = [(x["seen"] - x["published"]) * 1e3 for x in timed]
    after = [(x["committed"] - x["seen"]) * 1e3 - float(x["metrics"]["ms_total"]) for x in timed]
    print(f"    published -> journaled by the router (watcher + router): {ms_stats(seen)}")
    print(f"    journaled -> checkpoint committed, minus ms_total (queue wait + waiting for the checkpoint batch): "
          f"{ms_stats(after)}")
    previews = []
    last_frame: float | None = None
    for e in r["events"]:
        if e.get("event") == "frame_stacked":
            last_frame = parse_time(e["timestamp"])
        elif e.get("event") == "preview_written" and last_frame is not None:
            previews.append((parse_time(e["timestamp"]) - last_frame) * 1e3)
            last_frame = None
    print(f"    preview (frame_stacked -> preview_written, every {PREVIEW_EVERY} frames): {ms_stats(previews)}")
    if r.get("checkpoint_bytes"):
        print(f"    checkpoint file (one per session.checkpoint_every frames or checkpoint_seconds, defaults): "
              f"{r['checkpoint_bytes'] / 2**20:.0f} MiB")
    session = r.get("session") or {}
    timings = session.get("timings_ms") or {}
    print(f"  session.json: {session.get('stacked')} stacked, {session.get('rejected')} rejected, "
          f"{session.get('total_exposure_s')} s exposure; per frame median {timings.get('per_frame_median') or 0:.0f}"
          f" ms, worst {timings.get('per_frame_worst') or 0:.0f} ms; final stack {timings.get('finalize') or 0:.0f} ms")
    print(f"  close request -> stack.fits, frames.csv, session.json written: {r['close_s']:.1f} s; "
          f"SIGTERM -> exit {r['exit_code']} in {r['stop_s']:.1f} s; daemon CPU {r['cpu_s'] or 0:.0f} s")
    print(f"  stack: NCOMBINE {r.get('ncombine')} (expected {len(stacked)}), NAXIS1×NAXIS2 "
          f"{r['stack_shape'][0]}×{r['stack_shape'][1]}, BITPIX {r['stack_shape'][2]}")
    hwm_after = r["final"].get("VmHWM")
    print("  PEAK RSS")
    if r["hwm_reset"]:
        overall = max(r["hwm_library_kib"], hwm_after or 0)
        print(f"    overall (max of the library's VmHWM and the later one): {mib(overall)}")
        print(f"    library build: {mib(r['hwm_library_kib'])}; live stacking: {mib(r['hwm_lights_kib'])}; "
              f"through the close (final stack): {mib(r['hwm_close_kib'])}; last VmHWM before exit: {mib(hwm_after)}")
    else:
        print(f"    overall (last VmHWM before exit): {mib(hwm_after)}")
    print("    VmHWM after n frames journaled (since the reset): "
          + ", ".join(f"{k}: {mib(v.get('VmHWM'))}" for k, v in sorted(r["at_checkpoint"].items())))
    print(f"    largest 50 ms sample overall: {split(r['peak_sample'], r['events'])}")
    for phase in ("library", "lights", "close", "stop"):
        if phase in r["phase_peaks"]:
            print(f"    largest sample while {phase:<8}: {split(r['phase_peaks'][phase], r['events'])}")
    print(f"    ({r['samples']} samples)")
    if r["problems"]:
        print(f"  log: {len(r['problems'])} warnings/errors, first ones:")
        for e in r["problems"][:8]:
            print("    " + json.dumps(e)[:300])


# ------------------------------------------------------------------------------------------ main


def _interrupted(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_bench's clean-up: no daemon left behind


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="26", help="megapixels (default 26: 6248×4176)")
    parser.add_argument("--lights", type=int, default=20, help="lights of the one target (default 20)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between lights (default 2)")
    parser.add_argument("--burst", action="store_true", help="publish every light at once")
    parser.add_argument("--stars", type=int, default=1500, help="stars in a 26 MP frame (scaled by area)")
    parser.add_argument("--no-web", action="store_true", help="run the daemon without its web server")
    parser.add_argument("--library-memory-cap", type=int, metavar="MB",
                        help="[library] memory_cap_mb for the daemon (default: the daemon's own default)")
    parser.add_argument("--workdir", help="observatory folder (default: a temporary folder, removed at the end); "
                        "its synthetic night in .night/ stays and is reused by later runs")
    parser.add_argument("--keep", action="store_true", help="keep everything: the night and the daemon's folders")
    parser.add_argument("--child-generate", nargs=4, metavar=("DIR", "W", "H", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_generate:
        folder = Path(args.child_generate[0])
        w, h, n = (int(v) for v in args.child_generate[1:])
        print(json.dumps(generate(folder, w, h, n_lights=n, stars=args.stars, seed=2026)))
        return

    width, height = SIZES[args.size]
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="astrod-bench-daemon-"))
    root.mkdir(parents=True, exist_ok=True)
    obs = Observatory(root)
    la = os.getloadavg()
    print(f"astrod daemon benchmark: {args.size} MP ({width}×{height}), {args.lights} lights, "
          f"{os.cpu_count()} CPUs, load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; folder {root}")
    try:
        if night_ready(obs.night, width, height, n_lights=args.lights, stars=args.stars):
            print(f"  reusing the night in {obs.night}")
        else:
            shutil.rmtree(obs.night, ignore_errors=True)
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--stars", str(args.stars), "--child-generate",
                                   str(obs.night), str(width), str(height), str(args.lights)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"generation failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            t = json.loads(done.stdout.strip().splitlines()[-1])["timings"]
            print(f"  generated the night in {time.perf_counter() - t0:.0f} s (in a child process): sensor "
                  f"{t['sensor_s']:.1f} s; per frame bias {statistics.mean(t['bias_s']):.1f} s, dark "
                  f"{statistics.mean(t['dark_s']):.1f} s, flat {statistics.mean(t['flat_s']):.1f} s, light (render "
                  f"+ sensor + write) {statistics.mean(t['light_s']):.1f} s")
        r = run_bench(obs, n_lights=args.lights, interval=args.interval, burst=args.burst, web=not args.no_web,
                      library_cap_mb=args.library_memory_cap)
        report(r, n_lights=args.lights, interval=args.interval, burst=args.burst)
        print(f"  daemon log: {obs.log}")
    except DaemonFailed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        raise SystemExit(1) from err
    finally:
        if not args.keep:
            if args.workdir:
                obs.reset()  # the night stays, for the next run
            else:
                shutil.rmtree(root, ignore_errors=True)
    la = os.getloadavg()
    print(f"load average at the end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


if __name__ == "__main__":
    main()
