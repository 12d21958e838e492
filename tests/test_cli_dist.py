"""``lcfast measure`` under torchrun: 2 gloo processes on one machine, and a 2-node c10d
rendezvous on the loopback interface, each gives the counts of one process; rank 0
alone writes the result."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a tiny measurement: 7 points in blocks of 2 (4 blocks: 2 rounds over 2 ranks)
MEASURE = ["-m", "lcfast", "measure", "--model", "mnist-mlp", "--data", "random", "--points", "7", "--dirs", "3",
           "--radius", "0.1", "--backend", "reference", "--block-size", "2", "--no-progress"]
TIMEOUT = 600  # seconds per launcher (a rank left waiting fails the test instead of hanging)


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: torchrun's own connection failures on the loopback rendezvous (a launch is retried once
#: on these, never on anything else).  Seen once in ~12 runs of this file on the 2-core CI
#: machine (1 Dec 2026): "DistNetworkError: Failed to recv, got 0 bytes ... Did the
#: remote server shutdown or crash?" from the c10d store, the counts never reached.
RENDEZVOUS_ERRORS = ("RendezvousConnectionError", "DistNetworkError", "EADDRINUSE", "address already in use")


def _retry(launch):
    """``launch()`` -> ``(ok, output)``; once more on a rendezvous connection failure."""
    ok, out = launch()
    if not ok and any(e in out for e in RENDEZVOUS_ERRORS):
        ok, out = launch()
    assert ok, out[-6000:]
    return out


def _run(args, cwd):
    def launch():
        r = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                           timeout=TIMEOUT)
        return r.returncode == 0, r.stdout + r.stderr
    return _retry(launch)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    out = _run([*MEASURE, "--out", "one.json"], tmp)
    assert "processes=1" in out
    d = json.loads((tmp / "one.json").read_text())
    assert sum(map(sum, d["counts"])) > 0  # non-trivial counts, else equality proves nothing
    return d


def test_torchrun_two_processes_equal_one_process(tmp_path, one_process):
    out = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_port()}", *MEASURE, "--out", "two.json"], tmp_path)
    d = json.loads((tmp_path / "two.json").read_text())
    assert d["counts"] == one_process["counts"] and d["ids"] == one_process["ids"] == list(range(7))
    assert d["meta"]["processes"] == 2
    assert out.count("wrote two.json") == 1  # rank 0 alone writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.json", "two.png"]


def test_torchrun_two_nodes_c10d_rendezvous_equals_one_process(tmp_path, one_process):
    def launch():
        common = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                  f"--rdzv_endpoint=127.0.0.1:{_port()}", "--rdzv_id=lcfast-test"]
        launchers = [subprocess.Popen([sys.executable, *common, f"--node_rank={k}", *MEASURE, "--out", "nodes.json"],
                                      cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
                     for k in (0, 1)]
        try:
            outs = [p.communicate(timeout=TIMEOUT)[0] for p in launchers]
        finally:
            for p in launchers:
                if p.poll() is None:
                    p.kill()
        return all(p.returncode == 0 for p in launchers), "\n".join(outs)
    out = _retry(launch)
    d = json.loads((tmp_path / "nodes.json").read_text())
    assert d["counts"] == one_process["counts"] and d["ids"] == one_process["ids"]
    assert d["meta"]["processes"] == 2
    assert out.count("wrote nodes.json") == 1
