#!/usr/bin/env python3
"""The built-in dashboard in a real headless Chromium.

Starts a primary and a secondary `repliq daemon` on loopback (free ports,
temporary directories), a writer (`repliq append`) and a consumer
(`repliq dequeue`) on the primary's queue, then drives Chromium through the
DevTools protocol over a pipe (`--remote-debugging-pipe`: no port, no
websocket library) and checks that:

* both nodes appear with their roles, on the primary's page and on the
  secondary's;
* the message rate becomes > 0;
* the depth shown changes;
* the charts fill, the page raises no JavaScript error and requests nothing
  from anywhere but the daemon;
* in cluster mode (three more daemons, a Raft catalog), the catalog panel
  names the queue's leader and epoch, and after SIGKILL of the leader a
  survivor's page shows the new leader in a new epoch.

It then saves a 1280x900 screenshot (default docs/images/dashboard.png).
Usage: browser.py REPLIQ_BINARY [SCREENSHOT]. Exits non-zero on any failure.
"""

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

WIDTH, HEIGHT = 1280, 900
QUEUE = "orders"


def fail(msg):
    print(f"browser test: FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_until(what, secs, pred, interval=0.2):
    deadline = time.monotonic() + secs
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    fail(f"timed out waiting for {what} (last: {last!r})")


# ------------------------------------------------------------------ cluster


class Cluster:
    """Daemons on loopback: a static primary `node-0` and a secondary, or
    (`catalog=True`) three members in cluster mode with a Raft catalog."""

    def __init__(self, binary, root, catalog=False):
        self.binary = binary
        self.root = root
        self.procs = []
        self.names = ["cm-a", "cm-b", "cm-c"] if catalog else ["node-0", "node-1"]
        self.repl = [free_port() for _ in self.names]
        self.http = [free_port() for _ in self.names]
        peers = "".join(
            f"      - name: {n}\n        address: 127.0.0.1:{p}\n"
            for n, p in zip(self.names, self.repl)
        )
        if catalog:
            replication = "  mode: async\n  failover_timeout_ms: 2000\n"
            queues = ""
        else:
            replication = "  mode: async\n  primary: node-0\n  heartbeat_ms: 200\n"
            queues = f"  names: [{QUEUE}]\n"
        self.configs = []
        for i, name in enumerate(self.names):
            data = os.path.join(root, name, "data")
            text = (
                f"node:\n  name: {name}\n"
                f"replication:\n{replication}"
                f"  listen: 127.0.0.1:{self.repl[i]}\n"
                f"  discovery:\n    method: static\n    peers:\n{peers}"
                f"http:\n  listen: 127.0.0.1:{self.http[i]}\n"
                f"queue:\n  capacity: 200000\n{queues}"
                f"  persistence:\n    path: {data}\n"
            )
            path = os.path.join(root, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(text)
            self.configs.append(path)
        self.queue_dir = os.path.join(root, self.names[0], "data", QUEUE)

    def url(self, i, path="/"):
        return f"http://127.0.0.1:{self.http[i]}{path}"

    def start(self):
        for i, cfg in enumerate(self.configs):
            log = open(os.path.join(self.root, f"{self.names[i]}.log"), "w")
            self.procs.append(
                subprocess.Popen(
                    [self.binary, "daemon", "--config", cfg],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env={**os.environ, "RUST_LOG": "info"},
                )
            )
        for i in range(len(self.names)):
            wait_until(
                f"{self.names[i]} /healthz",
                30,
                lambda i=i: http_get(self.url(i, "/healthz"))[0] == 200,
            )

    def logs(self):
        out = []
        for n in self.names:
            p = os.path.join(self.root, f"{n}.log")
            if os.path.exists(p):
                with open(p) as f:
                    out.append(f"---- {n} log:\n{f.read()[-4000:]}")
        return "\n".join(out)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Load:
    """A writer and a consumer in waves, so that the depth rises and falls."""

    def __init__(self, binary, queue_dir):
        self.binary = binary
        self.dir = queue_dir
        self.stop = threading.Event()
        self.errors = []
        self.appended = 0
        self.threads = [
            threading.Thread(target=self.writer, daemon=True),
            threading.Thread(target=self.consumer, daemon=True),
        ]

    def run(self, args, stdin=None):
        try:
            r = subprocess.run(
                [self.binary, *args, self.dir],
                input=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as e:
            self.errors.append(f"repliq {args[0]}: {e}")
            self.stop.set()
            return
        if r.returncode != 0:
            self.errors.append(f"repliq {args[0]}: {r.stderr.decode()[-500:]}")
            self.stop.set()

    def writer(self):
        rng = random.Random(7)
        i = 0
        while not self.stop.is_set():
            n = rng.randint(300, 1500)
            lines = "".join(
                f"order {i + k} sku-{rng.randint(1, 999):03} qty {rng.randint(1, 9)}\n"
                for k in range(n)
            )
            self.run(["append"], lines.encode())
            i += n
            self.appended = i
            self.stop.wait(0.15)

    def consumer(self):
        rng = random.Random(11)
        t0 = time.monotonic()
        while not self.stop.is_set():
            # Waves: slower than the writer for a while, then faster.
            phase = int((time.monotonic() - t0) / 6) % 2
            n = rng.randint(100, 700) if phase == 0 else rng.randint(1500, 3500)
            self.run(["dequeue", "-n", str(n)])
            self.stop.wait(0.2)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=35)


# ------------------------------------------------------------------ chromium


class JsError(Exception):
    """An expression evaluated in the page threw (e.g. while it loads)."""



class Chromium:
    """Chromium driven over the DevTools protocol on fds 3 and 4."""

    def __init__(self, binary, profile, log):
        to_child_r, self.to_child_w = os.pipe()
        self.from_child_r, from_child_w = os.pipe()
        # Out of the way of 3 and 4 before the child moves them there.
        hi_r = os.dup(to_child_r)
        hi_w = os.dup(from_child_w)
        fds = [to_child_r, from_child_w]
        while hi_r in (3, 4) or hi_w in (3, 4):
            fds += [hi_r, hi_w]
            hi_r, hi_w = os.dup(hi_r), os.dup(hi_w)

        def child_fds():
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
            "--metrics-recording-only",
            "--no-pings",
            "--mute-audio",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            close_fds=False,
            preexec_fn=child_fds,
        )
        for fd in fds + [hi_r, hi_w]:
            os.close(fd)
        self.next_id = 0
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.replies = {}
        self.events = []
        self.reader = threading.Thread(target=self.read_loop, daemon=True)
        self.reader.start()
        self.session = None

    def read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.from_child_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    self.replies[None] = "closed"
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self.cond:
                    if "id" in msg:
                        self.replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self.cond.notify_all()

    def call(self, method, params=None, session=True, timeout=30):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        os.write(self.to_child_w, data)
        deadline = time.monotonic() + timeout
        with self.cond:
            while mid not in self.replies:
                if None in self.replies:
                    fail(f"chromium exited during {method}")
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"no answer from chromium to {method}")
                self.cond.wait(left)
            reply = self.replies.pop(mid)
        if "error" in reply:
            fail(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        att = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self.session = att["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        self.call("Page.navigate", {"url": url})

    def eval(self, expr):
        r = self.call(
            "Runtime.evaluate",
            {"expression": expr, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise JsError(f"{expr!r}: {d.get('exception', {}).get('description', d.get('text'))}")
        return r["result"].get("value")

    def screenshot(self, path):
        r = self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def problems(self, origin):
        """JavaScript errors, and requests to anything but `origin`."""
        out = []
        with self.lock:
            events = list(self.events)
        for e in events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails', {}).get('text')} "
                           f"{p.get('exceptionDetails', {}).get('exception', {}).get('description', '')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(f"console.error: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not (url.startswith(origin) or url.startswith("data:") or url == "about:blank"):
                    out.append(f"request outside the daemon: {url}")
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append(f"failed request: {p.get('errorText')}")
        return out

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except SystemExit:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ the test

NODES_JS = """[...document.querySelectorAll('#nodes .node')].map(e => ({
  name: e.dataset.name, role: e.dataset.role, link: e.dataset.link, health: e.dataset.health }))"""
NUM_JS = "(() => { const e = document.getElementById('%s'); return e && e.dataset.value !== undefined ? Number(e.dataset.value) : null; })()"


def nodes_ok(page, expect):
    """True when every expected node is shown with its role, connected."""
    got = {n["name"]: n for n in page.eval(NODES_JS) or []}
    return all(
        name in got and got[name]["role"] == role and got[name]["link"] in ("self", "connected")
        for name, role in expect.items()
    )


CATALOG_JS = """(() => { const s = document.getElementById('catalog');
  if (!s || s.hidden) return null;
  return [...document.querySelectorAll('#catalog-rows tr')].map(r => ({
    queue: r.dataset.queue, leader: r.dataset.leader, epoch: Number(r.dataset.epoch) })); })()"""


def catalog_rows(page):
    """The catalog table as the page shows it: {queue: (leader, epoch)}."""
    return {r["queue"]: (r["leader"], r["epoch"]) for r in page.eval(CATALOG_JS) or []}


def catalog_phase(binary, chromium, root):
    """Cluster mode: the catalog panel names a queue's leader and epoch, and
    shows the new leader in a new epoch after the old one is killed."""
    os.makedirs(os.path.join(root, "catalog"), exist_ok=True)
    cluster = Cluster(binary, os.path.join(root, "catalog"), catalog=True)
    page = None
    ok = False
    try:
        cluster.start()
        page = Chromium(chromium, os.path.join(root, "chromium-catalog"), open(os.path.join(root, "chromium-catalog.log"), "w"))
        page.open(cluster.url(0))
        wait_until("the catalog panel", 30, lambda: page.eval(CATALOG_JS) is not None)
        r = subprocess.run([binary, "create", cluster.queue_dir], capture_output=True, timeout=30)
        if r.returncode != 0:
            fail(f"repliq create: {r.stderr.decode()[-500:]}")
        r = subprocess.run([binary, "append", cluster.queue_dir, "one", "two"], capture_output=True, timeout=30)
        if r.returncode != 0:
            fail(f"repliq append: {r.stderr.decode()[-500:]}")
        wait_until(
            "the catalog panel to show cm-a leading orders in epoch 1",
            30,
            lambda: catalog_rows(page).get(QUEUE) == ("cm-a", 1),
        )
        head = page.eval("document.getElementById('catalog-head').textContent") or ""
        if "term" not in head or not all(n in head for n in cluster.names):
            fail(f"the catalog header says: {head!r}")
        print(f"browser test: catalog panel: {QUEUE} led by cm-a in epoch 1 ({head})", flush=True)

        # The leader dies; cm-b's page shows who took over, in a new epoch.
        cluster.procs[0].kill()
        cluster.procs[0].wait()
        page.call("Page.navigate", {"url": cluster.url(1)})
        wait_until("cm-b's page", 20, lambda: page.eval("document.body.dataset.live") == "yes")
        after = wait_until(
            "the catalog panel to show a new leader in a new epoch",
            60,
            lambda: (lambda row: row if row and row[0] in ("cm-b", "cm-c") and row[1] >= 2 else None)(
                catalog_rows(page).get(QUEUE)
            ),
        )
        problems = [p for p in page.problems("http://127.0.0.1:") if "favicon" not in p]
        if problems:
            fail("the page misbehaved:\n  " + "\n  ".join(problems))
        print(f"browser test: after SIGKILL of cm-a the catalog panel shows {after[0]} leading epoch {after[1]}", flush=True)
        ok = True
    finally:
        if page:
            page.close()
        cluster.stop()
        if not ok:
            print(cluster.logs(), file=sys.stderr)


def main():
    if len(sys.argv) < 2:
        fail("usage: browser.py REPLIQ_BINARY [SCREENSHOT]")
    binary = os.path.abspath(sys.argv[1])
    shot = sys.argv[2] if len(sys.argv) > 2 else "docs/images/dashboard.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        fail("chromium is not installed")
    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="repliq-browser-")
    cluster = Cluster(binary, root)
    load = None
    page = None
    ok = False
    try:
        cluster.start()
        load = Load(binary, cluster.queue_dir)
        wait_until("the primary's queue", 20, lambda: os.path.exists(os.path.join(cluster.queue_dir, "control.rq")))
        load.start()

        # The secondary's own page: it and its primary.
        page = Chromium(chromium, os.path.join(root, "chromium"), open(os.path.join(root, "chromium.log"), "w"))
        page.open(cluster.url(1))
        wait_until(
            "both nodes connected on the secondary's page",
            30,
            lambda: nodes_ok(page, {"node-1": "secondary", "node-0": "primary"}),
        )

        # The primary's page.
        page.call("Page.navigate", {"url": cluster.url(0)})
        wait_until("the primary's page", 20, lambda: page.eval("document.body.dataset.live") == "yes")
        wait_until(
            "both nodes connected on the primary's page",
            30,
            lambda: nodes_ok(page, {"node-0": "primary", "node-1": "secondary"}),
        )
        print("browser test: both nodes shown with their roles", flush=True)

        rate = wait_until("a message rate above 0", 30, lambda: (page.eval(NUM_JS % "kpi-in") or 0) > 0 and page.eval(NUM_JS % "kpi-in"))
        print(f"browser test: message rate {rate:.0f} msg/s", flush=True)

        depths = set()

        def depth_changed():
            d = page.eval(NUM_JS % "kpi-depth")
            if d is not None:
                depths.add(d)
            return len(depths) >= 3

        wait_until("the depth to change", 30, depth_changed, interval=0.5)
        print(f"browser test: depth took values {sorted(depths)[:6]}…", flush=True)

        # Charts fill; lag is charted per secondary.
        wait_until(
            "the charts to fill",
            30,
            lambda: page.eval(
                "(() => { const c = Chart.getChart('chart-rate'); const l = Chart.getChart('chart-lag');"
                " return !!c && c.data.labels.length >= 8 && !!l && l.data.datasets.some(d => d.label === 'node-1'); })()"
            ),
        )
        links = page.eval("[...document.querySelectorAll('#link-rows tr')].map(r => r.dataset.peer + ':' + r.dataset.connected)")
        if "node-1:true" not in (links or []):
            fail(f"the link to node-1 is not shown as connected: {links}")

        problems = [p for p in page.problems("http://127.0.0.1:") if "favicon" not in p]
        if problems:
            fail("the page misbehaved:\n  " + "\n  ".join(problems))

        # Let the charts show a while of traffic, then the picture.
        time.sleep(12)
        os.makedirs(os.path.dirname(shot) or ".", exist_ok=True)
        page.screenshot(shot)
        size = os.path.getsize(shot)
        if size < 20_000:
            fail(f"screenshot {shot} is only {size} bytes")
        if load.errors:
            fail("load generator: " + "; ".join(load.errors))
        print(f"browser test: screenshot {shot} ({size} bytes)", flush=True)
        load.finish()
        load = None
        page.close()
        page = None
        cluster.stop()
        catalog_phase(binary, chromium, root)
        ok = True
    finally:
        if load:
            load.finish()
        if page:
            page.close()
        cluster.stop()
        if not ok:
            print(cluster.logs(), file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    print(f"browser test: OK in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
