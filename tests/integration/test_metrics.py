"""Metrics and status for people, with the real parts: ``reconciler run`` as a process
against the real libvirtd, scraped by a real Prometheus (Debian's ``prometheus``
package, started on loopback with its own configuration and storage in the test's
folder, a free port, a 1 s scrape interval, stopped at the end); ``reconciler apply``
writing the status that ``status`` shows; a manifest that fails to load shown as a
failed object; ``status --watch``.

The daemon's helpers (``Env``: a root-owned manifest folder, a config, the daemon as
a subprocess following its JSON log) are test_daemon.py's. Waits poll until a
condition holds or a generous deadline passes; nothing asserts on a duration.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import test_daemon
from tests.integration.test_daemon import Env, kvm, wait_until

env = test_daemon.env  # the fixture: one test's manifest folder, config and daemons

PROMETHEUS = shutil.which("prometheus")
BROKEN_VM = """\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  memory: 1 GB
  vcpus: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


class Prometheus:
    """A real Prometheus on 127.0.0.1, scraping ``target`` every second."""

    def __init__(self, root: Path, target: str) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir()
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "reconciler",
                                "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        self.log = root / "prometheus.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=root,
        )  # fmt: skip

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited:\n{self.log.read_text()[-3000:]}", pytrace=False)
        try:
            return "Ready" in get(self.url + "/-/ready")
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        text = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        data = json.loads(text)
        assert data["status"] == "success", data
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    if PROMETHEUS is None:
        pytest.skip("no prometheus binary (scripts/setup-host.sh installs Debian's package)")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        p = Prometheus(tmp_path / f"prometheus-{len(started)}", target)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


def objects_by_state(result: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {(r["metric"]["kind"], r["metric"]["state"]): int(float(r["value"][1]))
            for r in result if float(r["value"][1])}  # fmt: skip


# --- Prometheus scrapes the daemon -------------------------------------------------------


def test_prometheus_scrapes_the_daemon(env: Env, prometheus_for: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    port = free_port()
    env.write_config(metricsAddress=f"127.0.0.1:{port}")
    a, b, lab = env.n("a"), env.n("b"), env.n("lab")
    env.put("lab.yaml", env.network(lab))
    env.put("vms.yaml", kvm(a), kvm(b, state="stopped"))
    (env.manifests / "broken.yaml").write_text(BROKEN_VM.format(name=env.n("broken")))
    (env.manifests / "broken.yaml").chmod(0o644)
    daemon = env.start()
    wait_until("both VMs defined", lambda: env.domain(a) is not None
               and env.domain(b) is not None, daemon=daemon)  # fmt: skip
    daemon.wait_quiet()
    listening = daemon.wait_for("metrics.listening",
                                lambda e: e.get("event") == "metrics.listening")  # fmt: skip
    assert listening["port"] == port and listening["host"] == "127.0.0.1", listening

    prometheus = prometheus_for(f"127.0.0.1:{port}")
    wait_until("prometheus ready", prometheus.ready, timeout=60)
    want = {("Network", "in-sync"): 1, ("VirtualMachine", "in-sync"): 2,
            ("VirtualMachine", "failed"): 1}  # fmt: skip
    seen: dict[tuple[str, str], int] = {}

    def scraped() -> bool:
        nonlocal seen
        seen = objects_by_state(prometheus.query("reconciler_objects"))
        return seen == want

    wait_until(f"prometheus has reconciler_objects {want}", scraped, timeout=60, daemon=daemon)
    assert prometheus.query('up{job="reconciler"}')[0]["value"][1] == "1"
    assert prometheus.query("reconciler_libvirt_up")[0]["value"][1] == "1"
    every = prometheus.query('{__name__=~"reconciler_.+"}')
    names = sorted({r["metric"]["__name__"] for r in every})
    for name in ("reconciler_actions_total", "reconciler_pass_duration_seconds_bucket",
                 "reconciler_last_successful_pass_timestamp_seconds",
                 "reconciler_applied_revision_info", "reconciler_build_info",
                 "reconciler_git_fetch_failures_total", "reconciler_drift_detected_total"):
        assert name in names, names  # fmt: skip
    creates = prometheus.query('sum(reconciler_actions_total{op="create",outcome="ok"})')
    assert creates and float(creates[0]["value"][1]) == 3, creates  # the network and two VMs

    # drift: a VM destroyed out of band is started again, and counted as drift healed
    wait_until("a running", lambda: bool(env.domain(a).isActive()), daemon=daemon)
    mark = daemon.mark()
    env.domain(a).destroy()
    daemon.wait_for("the drift healed", lambda e: e.get("event") == "drift"
                    and e.get("name") == a, since=mark)  # fmt: skip
    daemon.wait_quiet()

    def drift_counted() -> bool:
        found = prometheus.query('reconciler_drift_healed_total{kind="VirtualMachine"}')
        return bool(found) and float(found[0]["value"][1]) >= 1

    wait_until("prometheus has the healed drift", drift_counted, timeout=60, daemon=daemon)
    with capsys.disabled():
        print(f"\nmetrics: prometheus saw {sorted(seen.items())} and {len(names)} metric names")
    assert daemon.stop() == 0, daemon.tail()


def test_metrics_off_and_the_textfile(env: Env) -> None:
    textfile = env.root / "textfile" / "reconciler.prom"
    textfile.parent.mkdir()
    env.write_config(metricsAddress="off", metricsTextfile=str(textfile))
    name = env.n("vm")
    env.put("vm.yaml", kvm(name, state="stopped"))
    daemon = env.start()
    daemon.wait_quiet()
    wait_until("the textfile written", textfile.exists, daemon=daemon)
    text = textfile.read_text()
    assert 'reconciler_objects{kind="VirtualMachine",state="in-sync"} 1.0' in text, text
    assert not [e for e in daemon.events() if str(e.get("event", "")).startswith("metrics.")]
    assert daemon.stop() == 0, daemon.tail()


# --- a manifest edit is a change, not drift ----------------------------------------------


def test_a_manifest_edit_is_logged_as_a_change(env: Env) -> None:
    name = env.n("vm")
    env.put("vm.yaml", kvm(name, state="stopped", memory="64MiB"))
    daemon = env.start()
    wait_until("vm defined", lambda: env.domain(name) is not None, daemon=daemon)
    daemon.wait_quiet()
    mark = daemon.mark()
    env.put("vm.yaml", kvm(name, state="stopped", memory="96MiB"))
    event = daemon.wait_for("the edit", lambda e: e.get("name") == name
                            and e.get("event") in ("change", "drift"), since=mark)  # fmt: skip
    assert event["event"] == "change", event
    daemon.wait_quiet()
    assert daemon.stop() == 0, daemon.tail()


# --- status after apply; failed manifests; --watch ----------------------------------------


def test_status_reflects_apply_and_failed_manifests(env: Env) -> None:
    name, broken = env.n("vm"), env.n("broken")
    env.put("vm.yaml", kvm(name, state="stopped"))
    (env.manifests / "broken.yaml").write_text(BROKEN_VM.format(name=broken))
    (env.manifests / "junk.yaml").write_text("kind: [unclosed\n")
    done = env.cli("apply", str(env.manifests), "--yes", "--state-dir", str(env.state),
                   "--connect", env.uri, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # the broken manifests
    assert env.domain(name) is not None, done.stdout + done.stderr

    done = env.cli("status", "--state-dir", str(env.state), "-o", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["written_by"] == "apply" and data["connected"] is True, data
    assert "manifest problem(s)" in data["last_error"], data
    states = {(o["kind"], o["name"]): o["state"] for o in data["objects"]}
    assert states == {("VirtualMachine", name): "in-sync",
                      ("VirtualMachine", broken): "failed",
                      ("Manifest", str(env.manifests / "junk.yaml")): "failed"}, data  # fmt: skip

    done = env.cli("status", "--state-dir", str(env.state))
    assert done.stdout.startswith("written by apply (pid "), done.stdout
    row = [line for line in done.stdout.splitlines() if broken in line]
    assert row and row[0].split()[2] == "failed" and "spec.memory" in row[0], done.stdout

    # fixed, applied again: the status follows, and the failures are gone
    (env.manifests / "broken.yaml").unlink()
    (env.manifests / "junk.yaml").unlink()
    done = env.cli("apply", str(env.manifests), "--yes", "--state-dir", str(env.state),
                   "--connect", env.uri, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(env.cli("status", "--state-dir", str(env.state), "-o", "json").stdout)
    assert [(o["name"], o["state"]) for o in data["objects"]] == [(name, "in-sync")], data
    assert data["last_error"] is None, data

    # --watch, two refreshes (a pipe: frames one after another, no escape sequences)
    done = env.cli("status", "--state-dir", str(env.state), "--watch", "0.1", "--count", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("written by apply") == 2 and "\x1b" not in done.stdout, done.stdout
