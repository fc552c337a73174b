"""Quick side-by-side echo benchmark of the stream transport: an echo
server in one process (asyncio, uvloop, piston, or plain C epoll), a C
ping-pong client in another; prints the median messages/s and the server's
CPU time per message.

    python benchmarks/stream_quick/run.py [REPS] [SECONDS] [proto|bproto|streams] [MSGSIZE] [KINDS]
    e.g. python benchmarks/stream_quick/run.py 5 2 proto 1024 asyncio,uvloop,piston,c
"""
import subprocess, sys, time, statistics, os, socket
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(os.environ.get("TMPDIR", "/tmp"), "piston-stream-echo")
subprocess.run(["gcc", "-O2", "-o", BIN, os.path.join(HERE, "echo.c")], check=True)
env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
def port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p
def server(kind, proto, p):
    if kind == 'c':
        pr = subprocess.Popen([BIN, 'server', str(p)]); time.sleep(0.3); return pr
    pr = subprocess.Popen([sys.executable, os.path.join(HERE, 'server.py'), kind, str(p), proto], stdout=subprocess.PIPE, env=env, text=True)
    assert pr.stdout.readline().strip() == 'READY'
    return pr
def run(kind, proto, nconn, secs, size):
    p = port(); pr = server(kind, proto, p)
    def cpu():
        f = open(f"/proc/{pr.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]), int(f[12])
    try:
        u0, s0 = cpu()
        out = subprocess.run([BIN, 'client', str(p), str(nconn), str(secs), str(size)], capture_output=True, text=True)
        u1, s1 = cpu()
        rate = float(out.stdout)
        tick = os.sysconf("SC_CLK_TCK")
        n = rate * (secs + 0.3)
        CPU.setdefault((kind, nconn), []).append(((u1-u0)/tick/n*1e6, (s1-s0)/tick/n*1e6))
        return rate
    finally:
        pr.kill(); pr.wait()
CPU = {}
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 2
proto = sys.argv[3] if len(sys.argv) > 3 else 'proto'
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
kinds = sys.argv[5].split(',') if len(sys.argv) > 5 else ['asyncio', 'uvloop', 'piston', 'c']
for nconn in (1, 10):
    res = {k: [] for k in kinds}
    for r in range(reps):
        for k in kinds:
            res[k].append(run(k, proto, nconn, secs, size))
    med = {k: statistics.median(v) for k, v in res.items()}
    line = f"{proto} size={size} conns={nconn}: " + "  ".join(f"{k}={med[k]:.0f}" for k in kinds)
    if 'uvloop' in med and 'piston' in med:
        line += f"  piston/uvloop={med['piston']/med['uvloop']:.2f}"
    if 'c' in med and 'piston' in med:
        line += f"  piston/c={med['piston']/med['c']:.2f}"
    print(line, flush=True)
    print("   cpu us/msg (user, sys): " + "  ".join(f"{k}=({statistics.median(u for u, _ in CPU[(k, nconn)]):.2f}, {statistics.median(x for _, x in CPU[(k, nconn)]):.2f})" for k in kinds), flush=True)
