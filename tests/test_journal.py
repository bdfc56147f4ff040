"""The journal's bookkeeping when a start follows a crash (no root needed): what it adopts, what it
undoes at once, what it undoes when set-up is done, and that its file lists, at every step, each
change still on the host -- so a crash at any step leaves a journal that restores everything.

The changes here are files in a temporary directory, made and undone through the same
table of kinds (:func:`~vpnedu.net.journal.kinds`) that the host modules (nftables, sysctls,
routes) use; the root tests in ``tests/test_crash_restart.py`` do the same with the real host.
Then the journal's own rules: the table names every kind the code records, undo runs newest
first and past a failure, a crash mid-write loses nothing, and a kind this vpnedu does not know
is reported -- file, kind and parameters, in one line -- and kept, never skipped."""

import json
import os
import subprocess

import pytest

from vpnedu.net import journal


@pytest.fixture
def kinds(tmp_path, monkeypatch):
    """A run directory of our own and two kinds of change: ``test-file`` (a file that a new start
    can take over as it is: replaceable) and ``test-link`` (a symlink that must go at once)."""
    monkeypatch.setattr(journal, "RUN_DIR", tmp_path / "run")
    monkeypatch.setitem(journal.kinds(), "test-file", journal.Kind(os.unlink, identity=("path",)))
    monkeypatch.setitem(journal.kinds(), "test-link", journal.Kind(os.unlink))
    return tmp_path


def _on_file(j: journal.Journal) -> tuple[int, list[dict]]:
    lines = j.path.read_text().splitlines()
    return json.loads(lines[0])["pid"], [json.loads(x) for x in lines[1:]]


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_start_after_a_crash_adopts_replaces_and_settles(kinds):
    d = kinds
    made = {name: d / name for name in ("kept", "dropped", "link")}
    made["kept"].write_text("from the dead process")
    made["dropped"].write_text("from the dead process")
    made["link"].symlink_to(made["kept"])
    # The journal a process killed with SIGKILL left behind (with a line cut short by the kill).
    dead = journal.Journal("t0")
    journal.run_dir()
    entries = [{"kind": "test-file", "path": str(made["kept"])},
               {"kind": "test-link", "path": str(made["link"])},
               {"kind": "test-file", "path": str(made["dropped"])}]
    dead.path.write_text("\n".join([json.dumps({"pid": _dead_pid(), "name": "t0"})]
                                   + [json.dumps(e) for e in entries]) + '\n{"kind": "test-')

    j = journal.Journal("t0")
    said = []
    assert j.recover(said.append, adopt=True) == 1
    # The link went at once; both files stay, adopted: on file under this process's pid.
    assert not made["link"].exists() and made["kept"].exists() and made["dropped"].exists()
    assert "did not exit cleanly" in said[0] and "2 of them to be replaced in place" in said[0], said
    assert _on_file(j) == (os.getpid(), [entries[0], entries[2]])
    j.start()                                    # no new file: the adopted entries stay listed
    assert _on_file(j) == (os.getpid(), [entries[0], entries[2]])

    # Set-up takes one file over (and replaces its content in place), and makes a new change.
    taken = j.claim("test-file", path=str(made["kept"]))
    assert taken == entries[0] and j.claim("test-file", path=str(made["kept"])) is None
    made["kept"].write_text("from the new start")
    assert j.has("test-file", path=str(made["kept"]))
    assert not j.has("test-file", path=str(made["dropped"]))   # adopted, but nobody claimed it
    new = d / "new"
    j.record("test-file", path=str(new))
    new.write_text("new")
    assert _on_file(j)[1] == [entries[0], entries[2], {"kind": "test-file", "path": str(new)}]

    # End of set-up: what was not taken over is undone and leaves the journal.
    assert j.settle(said.append) == 1
    assert not made["dropped"].exists() and made["kept"].read_text() == "from the new start"
    assert _on_file(j)[1] == [entries[0], {"kind": "test-file", "path": str(new)}]

    # A crash now: 'vpnedu cleanup' (recover without adopting) undoes everything that is listed.
    again = journal.Journal("t0")
    assert again.recover(said.append) == 2
    assert not made["kept"].exists() and not new.exists() and not again.path.exists()


def test_a_failed_set_up_after_a_crash_undoes_the_adopted_changes_too(kinds):
    d = kinds
    f = d / "left"
    f.write_text("x")
    journal.run_dir()
    dead = journal.Journal("t1")
    dead.path.write_text(json.dumps({"pid": _dead_pid(), "name": "t1"}) + "\n"
                         + json.dumps({"kind": "test-file", "path": str(f)}) + "\n")
    j = journal.Journal("t1")
    assert j.recover(adopt=True) == 0 and f.exists()
    # Set-up fails before it claims anything: the tear-down undoes the adopted change as well.
    assert j.undo_all() == 1
    assert not f.exists() and not j.path.exists()
