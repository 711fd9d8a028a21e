"""Hanging-server timings of a syncd binary, for comparing two builds: a
server that accepts TCP connections and never answers; `syncd run --poll 2s
--no-slurm` on a copy of one finished fixture run. Samples the heartbeat age
and the lease renewal age every second for DURATION s, then sends SIGTERM
and times the exit.

    python3 tools/hang_timings.py BINARY WANDB_DIR DURATION [EXTRA FLAGS...]
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
from datetime import datetime, timezone

binary, fixture, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
extra = sys.argv[4:]
tmp = tempfile.mkdtemp()
root = os.path.join(tmp, "scratch")
shutil.copytree(fixture, os.path.join(root, "wandb"))
held = []
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
def accept():
    while True:
        c, _ = srv.accept(); held.append(c)
threading.Thread(target=accept, daemon=True).start()
url = "http://127.0.0.1:%d" % srv.getsockname()[1]
state = os.path.join(tmp, "state")
env = dict(os.environ, WANDB_API_KEY="k" * 40, WANDB_BASE_URL=url, HOME=tmp,
           XDG_CONFIG_HOME=os.path.join(tmp, "cfg"))
p = subprocess.Popen([binary, "run", "--poll", "2s", "--no-slurm", "--state-dir", state, *extra, root],
                     env=env, stderr=open(os.path.join(tmp, "log"), "w"))
def age(path, field):
    try:
        v = json.load(open(path))[field]
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return (datetime.now(timezone.utc) - t).total_seconds()
    except Exception:
        return None
worst_beat = worst_lease = 0.0; said = {}
t0 = time.time()
while time.time() - t0 < duration:
    time.sleep(1)
    b = age(os.path.join(state, "daemon.json"), "heartbeat_at")
    l = age(os.path.join(state, "lease.json"), "heartbeat_at")
    worst_beat = max(worst_beat, b if b is not None else 999)
    worst_lease = max(worst_lease, l if l is not None else 999)
    try:
        d = json.load(open(os.path.join(state, "daemon.json")))
        net = d.get("network") or ("online" if d.get("online") else "offline")
        said.setdefault(net, round(time.time() - t0, 1))
    except Exception:
        pass
t = time.time(); p.send_signal(signal.SIGTERM)
try:
    p.wait(120); took = time.time() - t
except subprocess.TimeoutExpired:
    p.kill(); took = None
print(json.dumps({"binary": binary, "window_s": duration, "worst_heartbeat_age_s": round(worst_beat, 1),
                  "worst_lease_renewal_age_s": round(worst_lease, 1), "first_said": said,
                  "sigterm_exit_s": None if took is None else round(took, 2)}))
shutil.rmtree(tmp, ignore_errors=True)
