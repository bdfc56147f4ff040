import os
import shutil
import subprocess
import sys

import pytest

from vpnedu.sim import make_pair

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(params=["wireguard", "aes256gcm", "null-teaching"])
def any_suite(request):
    return request.param


@pytest.fixture
def pair_factory(recwarn):
    def make(suite="wireguard", **kw):
        return make_pair(suite, allow_insecure=(suite == "null-teaching"), **kw)
    return make


def require_tool(name: str) -> str:
    """Path of a system tool; in CI a missing tool is a failure, elsewhere a skip."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (the test command installs it from Debian when run as root)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run_cli(*args: str, input: str | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """The real command line in a child process; ``timeout`` makes a hang a failure, ``kw`` goes
    to subprocess.run (e.g. ``stdin=`` a file, ``cwd=``)."""
    return subprocess.run([sys.executable, "-m", "vpnedu", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, **kw)


#: Test folders whose tests all share the host's network stack (namespaces, TUN, nftables, the
#: daemons' sockets): with pytest-xdist they run one at a time, on one worker.
HOST_FOLDERS = ("lab", "node", "datapath", "net")


def pytest_collection_modifyitems(config, items):
    # scripts/test.sh runs the suite on two pytest-xdist workers (--dist loadgroup): the tests
    # that build namespace labs or start daemons go to one of them, in order, as without xdist
    # ("host" group); the rest -- the engine on bytes, the simulation, parsers, notebooks in
    # the simulated lab -- run on the other meanwhile.
    host = pytest.mark.xdist_group("host")
    for item in items:
        parts = item.path.parts
        folder = parts[parts.index("tests") + 1] if "tests" in parts else ""
        if "root" in item.keywords or folder in HOST_FOLDERS or item.path.name == "test_readme_course.py":
            # (test_readme_course: its two tests share one fixture that runs both README blocks)
            item.add_marker(host)
    if os.environ.get("VPNEDU_SOAK") != "1":
        skip_soak = pytest.mark.skip(reason="a minutes-long soak: run with VPNEDU_SOAK=1")
        for item in items:
            if "soak" in item.keywords:
                item.add_marker(skip_soak)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, TUN); CI runs it as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kernel_path(tmp_path_factory):
    """A 'python3' Jupyter kernel spec that runs this interpreter (put its folder first on
    JUPYTER_PATH), so notebooks execute with the same vpnedu in CI as in the test process."""
    import json
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (vpnedu tests)", "language": "python"}))
    return d


_lab_counter = [0]


@pytest.fixture
def lab_factory():
    """Labs with names unique to this test run; always torn down, even when the test fails."""
    from vpnedu.netns_lab.topology import Lab
    made = []

    def make(clients: int = 1, up: bool = True) -> Lab:
        _lab_counter[0] += 1
        lab = Lab(prefix=f"vt{os.getpid() % 10000}x{_lab_counter[0]}-", clients=clients, log=lambda s: None)
        made.append(lab)
        if up:
            lab.up()
        return lab

    yield make
    for lab in made:
        lab.down()
