"""vpnedu's tests, one folder per part of the code they test (``pytest tests/protocol`` runs one part):

protocol/   vpnedu/protocol: handshake, cookies, AllowedIPs, transport, timers, replay, messages,
            the device end to end, events, fuzzing, and the sans-IO import check
net/        vpnedu/net: the host-change journal; captures (vpnedu/capture.py)
node/       the daemons (vpnedu/node) for real: forwarding, shutdown, crash and restart, recovery,
            readiness, reliability under load
datapath/   vpnedu/datapath: the IO layer and its offloads
proxy/      vpnedu/proxy: the transport-layer proxy
course/     the course: notebooks, widgets, the event feed, the README's course, the browser
cli/        the command line: config files, reading files, secrets, keys, provisioning
lab/        the namespace lab (vpnedu/lab): the tunnel, the demo, wireguard-go interop, bench
sim/        the simulated lab (vpnedu/sim)
exercises/  the classroom exercises (vpnedu/labs)

Shared by all: ``conftest.py`` (fixtures, the ``root``/``slow``/``soak`` markers' handling) and
``lablib.py`` (starting daemons in namespaces), imported as ``..conftest`` / ``..lablib``.
"""
