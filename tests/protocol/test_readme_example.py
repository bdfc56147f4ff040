"""The README's "How IO code drives the core" example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_of_driving_the_core_runs():
    text = README.read_text()
    section = text[text.index("How IO code drives the core"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "send_packets" in code and "receive(" in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)   # its own asserts check the batch
    # What the comments promise: the handshake completed, the queued ping left under the new
    # session, then the batch of 64 (65 transport messages in all).
    peer = namespace["client"].status()["peers"][0]
    assert peer["session"]["initiator"] and peer["packets_tx"] == 65
    (queued, _), = namespace["got"].datagrams
    assert queued[0] == 4   # a transport data message
