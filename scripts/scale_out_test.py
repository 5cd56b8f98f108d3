"""Three `serve` replicas on one Redis behind a real HAProxy (round robin), as a deployment runs.

Run by scripts/scale-out-test.sh, which installs redis-server and haproxy and builds the binary,
once on one Redis and once (third argument `cluster`) on a Redis Cluster of three masters.
Checks, each printed as it passes:
  1. 30 concurrent requests for one new URL through the balancer: all 200, one download;
  2. /report byte-identical on every replica, count 30;
  3. a user added by the CLI while the replicas run; a token from one replica (through the
     balancer) works on every replica; `token revoke` (the CLI) -> 401 on every replica;
  4. a replica killed with SIGKILL under load: the balancer's other replicas keep answering;
  5. Redis stopped (SIGSTOP) for 5 s under load: classify keeps answering 200, /report 503, and
     once Redis continues (SIGCONT) the counts include the requests of the outage.
"""
import atexit
import concurrent.futures
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN, IMAGES = sys.argv[1], sys.argv[2]
CLUSTER = sys.argv[3:] == ["cluster"]
work = tempfile.mkdtemp(prefix="scale-out-")
procs = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port():
    """A free port whose cluster bus port (port + 10000, which must exist) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass


def start(args, **kw):
    p = subprocess.Popen(args, **kw)
    procs.append(p)
    return p


def stop_all():
    """Every server started, also when start-up itself failed (sys.exit before the checks)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)  # a stopped Redis must be able to take SIGTERM
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


atexit.register(stop_all)


def wait_port(port, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within {timeout} s")


# The image server: the photos, each GET counted, answered after 1 s so that concurrent
# requests overlap the download.
downloads = {}
lock = threading.Lock()


class Images(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=IMAGES, **kw)

    def do_GET(self):
        with lock:
            downloads[self.path] = downloads.get(self.path, 0) + 1
        time.sleep(1)
        self.path = self.path.split("?")[0]
        super().do_GET()

    def log_message(self, *a):
        pass


images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
threading.Thread(target=images.serve_forever, daemon=True).start()
image_base = f"http://127.0.0.1:{images.server_address[1]}"

def redis_server(port, *extra):
    p = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", "--dir", work, *extra],
              stdout=subprocess.DEVNULL)
    wait_port(port, "redis-server")
    return p


if CLUSTER:
    ports = [free_cluster_port() for _ in range(3)]
    redis_nodes = [redis_server(p, "--cluster-enabled", "yes", "--cluster-config-file",
                                os.path.join(work, f"nodes-{p}.conf")) for p in ports]
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True,
                   stdout=subprocess.DEVNULL)
    while not all(b"cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True).stdout
            for p in ports):
        time.sleep(0.1)
    redis_args = ["--redis-url", ",".join(f"redis://127.0.0.1:{p}/" for p in ports),
                  "--redis-cluster"]
else:
    port = free_port()
    redis_nodes = [redis_server(port)]
    redis_args = ["--redis-url", f"redis://127.0.0.1:{port}/"]
print(f"on {'a Redis Cluster of 3 masters' if CLUSTER else 'one Redis'}")

replicas = []
for i in range(3):
    port = free_port()
    log = open(os.path.join(work, f"replica{i}.log"), "w")
    p = start([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
               os.path.join(work, f"data{i}"), "--allow-private-networks", *redis_args,
               "--stats-flush-interval", "50ms"],
              stdout=log, stderr=log, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    replicas.append((p, port))
for p, port in replicas:
    wait_port(port, f"replica on {port}", timeout=120)

lb_port = free_port()
servers = "\n".join(f"    server r{i} 127.0.0.1:{port} check inter 200ms fall 1 rise 2"
                    for i, (_, port) in enumerate(replicas))
with open(os.path.join(work, "haproxy.cfg"), "w") as f:
    f.write(f"""global
    maxconn 1024
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend api
    bind 127.0.0.1:{lb_port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
{servers}
""")
start(["haproxy", "-f", os.path.join(work, "haproxy.cfg"), "-db"], stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
wait_port(lb_port, "haproxy")
time.sleep(1)  # the first health checks


def call(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()


def classify(image, port=lb_port):
    return call("POST", f"http://127.0.0.1:{port}/classify-image", {"image_url": image})[0]


def report(port):
    return call("GET", f"http://127.0.0.1:{port}/report")


def admin(*args, stdin=""):
    """The admin CLI on the replicas' Redis, as an operator runs it while they serve."""
    out = subprocess.run([BIN, *args, "--data-dir", os.path.join(work, "admin"), *redis_args],
                         input=stdin.encode(), capture_output=True)
    check(out.returncode == 0, f"{' '.join(args)}: {out.stderr.decode()[-300:]}")


def secret(port, token):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/secret",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def check_tokens():
    admin("user", "add", "alice", "--password-stdin", stdin="pw-alice")
    status, body = call("POST", f"http://127.0.0.1:{lb_port}/token",
                        {"username": "alice", "password": "pw-alice"})
    check(status == 200, f"a login through the balancer ({status})")
    token = json.loads(body)["token"]
    statuses = [secret(port, token) for _, port in replicas]
    check(statuses == [200] * 3, f"the token works on every replica ({statuses})")
    admin("token", "revoke", token)
    statuses = [secret(port, token) for _, port in replicas]
    check(statuses == [401] * 3, f"after `token revoke`, 401 on every replica ({statuses})")


def check(ok, what):
    if not ok:
        for i in range(3):
            print(f"--- replica{i}.log (tail)")
            print("".join(open(os.path.join(work, f"replica{i}.log")).readlines()[-20:]))
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


try:
    new = f"{image_base}/cat.bmp?n=1"
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda _: classify(new), range(30)))
    check(statuses == [200] * 30, f"30 concurrent requests for one new URL all answered 200 ({set(statuses)})")
    check(downloads.get("/cat.bmp?n=1") == 1, f"one download for 30 requests over 3 replicas ({downloads})")

    time.sleep(0.5)  # every replica's last flush
    bodies = [report(port) for _, port in replicas]
    check(all(b == bodies[0] for b in bodies) and bodies[0][0] == 200,
          "/report byte-identical on every replica")
    check(json.loads(bodies[0][1])[0]["count"] == 30, "and it counts 30")
    check_tokens()

    victim, _ = replicas[2]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(classify, new) for _ in range(40)]
        time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        statuses = [f.result() for f in futures]
    # Requests in flight on the dead replica's connections fail (502) until the health check
    # (every 200 ms, one failure) takes it out; after that every request goes to the others.
    time.sleep(1)
    after = [classify(new) for _ in range(20)]
    check(after == [200] * 20,
          f"after a replica's SIGKILL the others answer ({sorted(set(statuses))} while it died)")

    time.sleep(0.5)
    before = json.loads(report(replicas[0][1])[1])[0]["count"]
    for node in redis_nodes:
        node.send_signal(signal.SIGSTOP)
    try:
        during = [classify(new, port) for _, port in replicas[:2] for _ in range(10)]
        fresh = classify(f"{image_base}/bird.bmp?n=2")
        status = report(replicas[0][1])[0]
        check(during == [200] * 20 and fresh == 200,
              "Redis stopped: classify keeps answering 200 (cached and new images)")
        check(status == 503, f"Redis stopped: /report answers 503 ({status})")
    finally:
        time.sleep(max(0, 5 - 1))
        for node in redis_nodes:
            node.send_signal(signal.SIGCONT)
    deadline, counted = time.time() + 10, None
    while time.time() < deadline:
        status, body = report(replicas[0][1])
        if status == 200:
            counted = json.loads(body)[0]["count"]
            if counted == before + 20:
                break
        time.sleep(0.2)
    check(counted == before + 20,
          f"Redis back: the outage's 20 requests are counted ({before} -> {counted})")
    print("scale-out: all checks passed")
finally:
    stop_all()
    images.shutdown()
