"""The `net` benchmark's machinery: its C programs build cleanly and echo
correctly, the Python servers echo on piston, and a tiny case yields rows.
Behaviour only: nothing here looks at a speed."""
import contextlib
import os
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import PISTON_REQUIRED, require_piston

KiB = 1024


@pytest.fixture(scope="module")
def procs():
    require_piston()
    from piston._cli import _benchmarks
    _benchmarks()  # piston.benchmarks, installed or from the checkout
    from piston.benchmarks import _netprocs
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc.split()[0]) is None and not PISTON_REQUIRED:
        pytest.skip(f"no C compiler ({cc!r}) to build the load generator")
    return _netprocs


@pytest.mark.parametrize("name", ["netload", "netecho"])
def test_c_programs_build_warning_free(procs, name, tmp_path):
    cc = os.environ.get("CC", "cc").split()
    src = procs.C_DIR / f"{name}.c"
    r = subprocess.run(cc + procs.CFLAGS + ["-Werror", "-o",
                                            str(tmp_path / name), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(procs.build(name), os.X_OK)


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("size,conns", [(KiB, 1), (64 * KiB, 3),
                                        (1024 * KiB, 2)])
def test_c_server_echoes_what_netload_sends(procs, unix, size, conns):
    with procs.Server("c", "protocol", unix, None) as server:
        # -V: every message differs and every echoed byte is compared.
        r = procs.netload(server.address, conns, size, 0.2, None,
                          verify=True)
    assert r["messages"] > 0
    assert r["bytes"] == r["messages"] * size
    assert r["connections"] == conns
    assert 0 <= r["client_cpu"] <= 1.5


@pytest.mark.parametrize("style", ["protocol", "buffered", "streams"])
@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_piston_servers_echo_every_size(procs, style, unix):
    with procs.Server("piston", style, unix, None) as server:
        for size, conns in ((KiB, 1), (64 * KiB, 4), (1024 * KiB, 2)):
            r = procs.netload(server.address, conns, size, 0.1, None,
                              verify=True)
            assert r["messages"] > 0, (size, conns)
        assert server.alive()


def _serve_once(handler):
    """A one-connection TCP server on 127.0.0.1 running ``handler(conn)``
    in a thread; returns its port and the thread."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def run():
        with lsock, contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            with conn:
                handler(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


def test_netload_rejects_a_wrong_echo(procs):
    def mangle(conn):
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(bytes(len(data)))  # zeros, not the message

    port, t = _serve_once(mangle)
    with pytest.raises(procs.BenchError, match="differs"):
        procs.netload(procs.Address(port=port), 1, KiB, 0.2, None,
                      verify=True)
    t.join(10)


def test_netload_reports_a_server_that_hangs_up(procs):
    port, t = _serve_once(lambda conn: conn.recv(10))
    with pytest.raises(procs.BenchError, match="closed|reset"):
        procs.netload(procs.Address(port=port), 1, KiB, 0.5, None)
    t.join(10)


def _http(port, request, responses):
    """Sends ``request``; reads ``responses`` responses, or to end of file
    when ``responses`` is None.  Returns the bytes and whether the server
    closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(request)
        data = b""
        while responses is None or data.count(b"HTTP/1.1 ") < responses:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
        return data, False


def test_piston_http_server_keeps_alive_and_pipelines(procs):
    with procs.Server("piston", "http", False, None) as server:
        port = server.address.port
        get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        data, closed = _http(port, get * 3, 3)
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 3
        assert data.endswith(b"Hello, world!")
        assert not closed
        data, closed = _http(
            port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            None)
        assert data.startswith(b"HTTP/1.1 200 OK") and closed
        data, closed = _http(port, b"NONSENSE\r\n\r\n", None)
        assert data.startswith(b"HTTP/1.1 400") and closed


def test_servers_are_gone_after_close(procs):
    with procs.Server("piston", "protocol", True, None) as server:
        pid, path = server.proc.pid, server.address.path
        assert os.path.exists(path)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(path)


def test_tiny_protocol_case_gives_rows(procs, monkeypatch):
    from piston.benchmarks import _harness, net
    monkeypatch.setattr(net, "LOOPS", ["piston"])
    monkeypatch.setenv("PISTON_BENCH_NET_SECONDS", "0.2")
    h = _harness.Harness(quick=True)
    h.reps, h.warmup = 1, 0
    rows = net._echo(h, "protocol", False, True, [(KiB, 1)])
    assert [r.case for r in rows] == [
        "TCP echo, Protocol, 1 KiB x 1 conn",
        "TCP echo, Protocol, 1 KiB x 1 conn: piston / C server"]
    main, vs_c = rows
    assert set(main.values) == {net.C, "piston"}, main.note
    assert all(v > 0 for v in main.values.values())
    assert vs_c.baseline == net.C and vs_c.ratio is not None
    assert vs_c.target == net.TARGET_VS_C
    assert "% of the C server" in main.note


def test_missing_compiler_gives_a_row_not_a_crash(procs, monkeypatch):
    from piston.benchmarks import _harness, net
    monkeypatch.setenv("CC", "/nonexistent/cc")
    h = _harness.Harness(quick=True)
    rows = net._echo(h, "protocol", False, True, [(KiB, 1)])
    assert len(rows) == 1 and not rows[0].values
    assert "no C compiler" in rows[0].note
