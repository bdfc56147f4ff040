"""The course as a newcomer meets it, checked in the notebooks themselves (nbclient, simulated mode).

Each test runs a course notebook top to bottom in a real kernel, then one extra cell that looks at
the objects the notebook made (the ladder, the field table, the event log, the plot) the way a
student's eyes would: the same index written the same way everywhere, a table instead of a wall of
text, a plot whose title, axes and legend agree and do not hide each other.
"""

import json
import os
import re

from tests.course.test_notebooks import NOTEBOOKS, nbclient, nbformat, outputs_by_tag, widget_states

PROBE_02 = '''
import json
from vpnedu.events import format_value
ini = ladder.messages[0]
print("PROBE" + json.dumps({"sender_index": ini.fields["sender_index"], "ladder": ladder.value,
                            "log": log.table.value}))
'''

PROBE_06 = '''
import json
up, down = plot.ax_up, plot.ax_down
fig = plot.figure
fig.canvas.draw()
legend = plot.legend.get_window_extent()
print("PROBE" + json.dumps({
    "title": fig.get_suptitle(), "ylabels": [up.get_ylabel(), down.get_ylabel()],
    "legend_overlaps_axes": [bool(legend.overlaps(ax.get_window_extent())) for ax in (up, down)],
    "up_lines": [l.get_label() for l in up.get_lines()], "down_lines": [l.get_label() for l in down.get_lines()],
    "panels": [up.get_title(loc="left"), down.get_title(loc="left")]}))
'''


def run_with_probe(name: str, probe: str, kernel_path) -> tuple:
    """Run notebook ``name`` in simulated mode with ``probe`` appended as a last cell (in memory:
    the committed notebook is not touched); return the executed notebook and the JSON the probe printed."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    env = {"VPNEDU_MODE": "sim", "JUPYTER_PATH": str(kernel_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, store_widget_state=True,
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    m = re.search(r"PROBE(\{.*\})", out)
    assert m, f"the probe cell printed no result:\n{out}"
    return nb, json.loads(m[1])


def test_notebook_02_dumps_fields_as_a_table_and_writes_indices_one_way(kernel_path):
    nb, probe = run_with_probe("02-handshake.ipynb", PROBE_02, kernel_path)
    hexed = f"{probe['sender_index']:#010x}"
    # The field dump is an HTML table (one row per field, the value in a column that may break
    # anywhere, the meaning in one that wraps between words), not printed lines.
    cell = next(c for c in nb.cells if "check-fields" in c.metadata.get("tags", []))
    assert not [o for o in cell.outputs if o.get("output_type") == "stream"], "the fields are printed as text"
    html = "".join(o["data"].get("text/html", "") for o in cell.outputs if "data" in o)
    assert "<table class='vpnedu-fields'>" in html and "vpnedu-field-value" in html
    for field in ("sender_index", "receiver_index", "ephemeral", "encrypted_static", "encrypted_timestamp",
                  "mac1", "mac2", "encrypted_nothing"):
        assert f"<td class='vpnedu-f vpnedu-field-name'>{field}</td>" in html, field
    # One way of writing an index everywhere: hex with 0x in the ladder, the table and the event log.
    assert hexed in probe["ladder"] and hexed in html
    assert f"sender_index={hexed}" in probe["log"], probe["log"][:3000]
    assert f"sender_index={probe['sender_index']} " not in probe["log"]
    states = widget_states(nb)
    logs = [s["state"]["value"] for s in states.values() if "vpnedu-eventlog" in s["state"].get("_dom_classes", ())]
    assert logs and hexed in logs[0]


def test_notebook_06_plot_speaks_mbit_and_keeps_legend_and_curves_apart(kernel_path):
    nb, probe = run_with_probe("06-performance.ipynb", PROBE_06, kernel_path)
    # The title and both y axes say Mbit/s (no "bytes/s" title over a Mbit/s axis).
    assert "Mbit/s" in probe["title"] and "bytes" not in probe["title"], probe
    assert probe["ylabels"] == ["Mbit/s", "Mbit/s"]
    # The legend lies outside both panels, so it covers no curve.
    assert probe["legend_overlaps_axes"] == [False, False], probe
    # Up and down each have their own panel: equal rates (the simulation's echo) cannot hide a line.
    assert probe["panels"][0].startswith("up") and probe["panels"][1].startswith("down")
    assert probe["up_lines"] == probe["down_lines"] == ["vpnedu", "plain link"], probe
    # The notebook says what it measures and why `vpnedu bench` shows more.
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for words in ("--bidir", "outer link", "vpnedu bench", "one direction at a time", "BENCHMARKS.md"):
        assert words in text, words
    assert "Mbit/s up" in outputs_by_tag(nb)["check-compare"]


def test_notebooks_and_docs_never_speak_of_a_tracker():
    """The course and the docs speak of the product: no "(issue 5)", no "the issue's bar"."""
    root = NOTEBOOKS.parent
    files = [*NOTEBOOKS.glob("*.ipynb"), *(root / "exercises").glob("*.ipynb"), *(root / "docs").glob("*.md"),
             root / "README.md", root / "BENCHMARKS.md"]
    pattern = re.compile(r"\bissues?\s*#?\d+|\bthe issue'?s?\b|\bissue tracker\b|\bGitHub issue", re.I)
    found = [f"{p.relative_to(root)}: {m[0]!r}" for p in files if p.exists() for m in pattern.finditer(p.read_text())]
    assert not found, found
