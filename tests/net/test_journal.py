"""The journal's bookkeeping when a start follows a crash (no root needed): what it adopts, what it
undoes at once, what it undoes when set-up is done, and that its file lists, at every step, each
change still on the host -- so a crash at any step leaves a journal that restores everything.

The changes here are files in a temporary directory, made and undone through the same
table of kinds (:func:`~vpnedu.net.journal.kinds`) that the host modules (nftables, sysctls,
routes) use; the root tests in ``tests/node/test_crash_restart.py`` do the same with the real host.
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


# ---------------------------------------------------------------------------- the table of kinds
def _journal_calls() -> list[tuple[str, str, set[str], str]]:
    """Every ``<journal>.record/claim("kind", name=...)`` call in vpnedu's source, read from the
    code: (method, kind, keyword names, where)."""
    import ast
    from pathlib import Path

    import vpnedu
    found = []
    for path in Path(vpnedu.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("record", "claim") and "journal" in ast.unparse(node.func.value)
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names = {k.arg for k in node.keywords if k.arg is not None}
                found.append((node.func.attr, node.args[0].value, names, f"{path.name}:{node.lineno}"))
    return found


def test_the_table_undoes_every_kind_the_code_records_with_the_parameters_it_records():
    import inspect
    table = journal.kinds()
    calls = _journal_calls()
    recorded = {kind for method, kind, _, _ in calls if method == "record"}
    # Every row is used, and every kind the code records has a row: nothing can be recorded
    # that nobody knows how to undo.
    assert recorded == set(table), (recorded ^ set(table))
    for method, kind, names, where in calls:
        params = inspect.signature(table[kind].undo).parameters
        assert names <= set(params), f"{where}: {kind} records {names - set(params)}, its undo takes {list(params)}"
        if method == "claim" and names:
            assert names == set(table[kind].identity), where
    # The replaceable kinds are the ones the module docstring names, each named by parameters
    # its undo takes.
    assert {k for k, row in table.items() if row.replaceable} == {"nft-table", "sysctl", "policy-rule",
                                                                   "local-route", "policy-rule6",
                                                                   "local-route6"}
    assert all(set(row.identity) <= set(inspect.signature(row.undo).parameters) for row in table.values())


def test_a_kind_without_an_undo_cannot_be_recorded_or_claimed(kinds):
    j = journal.Journal("t2")
    j.start()
    with pytest.raises(ValueError, match="no undo for kind 'test-nothing'"):
        j.record("test-nothing", path="x")
    assert _on_file(j)[1] == [] and j.entries == []
    with pytest.raises(ValueError, match="named by"):
        j.claim("test-file", name="x")          # test-file is named by its path
    j.undo_all()


# ---------------------------------------------------------------------------- order, failures, crashes
def test_undo_runs_newest_first_and_a_failing_undo_does_not_stop_the_rest(kinds, monkeypatch):
    undone = []

    def undo(path):
        undone.append(path)
        if path == "b":
            raise OSError("device or resource busy")
    monkeypatch.setitem(journal.kinds(), "test-order", journal.Kind(undo))
    j = journal.Journal("t3")
    j.start()
    for name in "abc":
        j.record("test-order", path=name)
        # The entry is on disk before record() returns, i.e. before the change is made.
        assert _on_file(j)[1][-1] == {"kind": "test-order", "path": name}
    said = []
    assert j.undo_all(said.append) == 2
    assert undone == ["c", "b", "a"]
    assert said == ["could not undo test-order {'path': 'b'}: device or resource busy"]
    assert not j.path.exists()


def test_a_crash_mid_write_loses_no_change_that_was_made(kinds):
    d = kinds
    made = d / "made"
    made.write_text("x")
    j = journal.Journal("t4")
    j.start()
    j.record("test-link", path=str(made))
    # Killed in the middle of appending the next entry (its change was never made) ...
    with open(j.path, "a") as f:
        f.write('{"kind": "test-link", "pa')
    # ... and in the middle of an atomic rewrite: a half-written new file next to the journal.
    j.path.with_name(j.path.name + ".new").write_text('{"pid": 1, "na')
    _make_dead(j)
    again = journal.Journal("t4")
    assert again.recover() == 1                    # the complete entry, not the torn ones
    assert not made.exists() and not again.path.exists()
    # The torn new file is simply overwritten by the next rewrite.
    again.start()
    assert _on_file(again) == (os.getpid(), [])
    again.undo_all()


def _make_dead(j: journal.Journal) -> None:
    """Let a journal look like one a killed process left behind (its head names a dead pid)."""
    lines = j.path.read_text().split("\n")
    lines[0] = json.dumps({"pid": _dead_pid(), "name": j.name})
    j.path.write_text("\n".join(lines))


# ---------------------------------------------------------------------------- an unknown kind
def _leave_journal(name: str, entries: list) -> journal.Journal:
    journal.run_dir()
    dead = journal.Journal(name)
    dead.path.write_text("\n".join([json.dumps({"pid": _dead_pid(), "name": name})]
                                   + [json.dumps(e) for e in entries]) + "\n")
    return dead


@pytest.mark.parametrize("adopt", [False, True], ids=["cleanup", "next-start"])
def test_an_unknown_kind_is_kept_and_named_while_every_other_change_is_undone(kinds, adopt):
    d = kinds
    first, last = d / "first", d / "last"
    first.write_text("x")
    last.write_text("x")
    newer = {"kind": "nft6-table", "family": "ip6", "name": "vpnedu_t5"}
    dead = _leave_journal("t5", [{"kind": "test-file", "path": str(first)}, newer,
                                 [1, 2], {"kind": "test-link", "path": str(last)}])
    j = journal.Journal("t5")
    with pytest.raises(journal.UnknownChange) as e:
        j.recover(adopt=adopt)
    # Both known changes are undone -- even the replaceable one a start would otherwise adopt,
    # since this start cannot go on -- and the unknown ones stay in the file, for a later version.
    assert not first.exists() and not last.exists()
    assert e.value.undone == 2 and e.value.unknown == [newer, [1, 2]]
    assert [json.loads(x) for x in dead.path.read_text().splitlines()[1:]] == [newer, [1, 2]]
    assert not j.started and j.entries == []
    # The one line names the file, the kind with what it was about, and what to do.
    line = str(e.value)
    assert "\n" not in line and str(dead.path) in line
    assert """'nft6-table' {"family": "ip6", "name": "vpnedu_t5"}""" in line and "[1, 2]" in line
    assert "2 other change(s) were undone, and these stay in the journal" in line
    assert "vpnedu cleanup" in line and "by hand" in line
    # Until then, every recovery says so again (and has nothing more to undo).
    with pytest.raises(journal.UnknownChange) as e:
        journal.Journal("t5").recover(adopt=adopt)
    assert e.value.undone == 0 and e.value.unknown == [newer, [1, 2]]


def test_vpnedu_cleanup_undoes_all_it_can_and_names_the_unknown_kind_in_one_line(kinds, capsys):
    from vpnedu.cli import main
    d = kinds
    a, b = d / "a", d / "b"
    a.write_text("x")
    b.write_text("x")
    _leave_journal("t6", [{"kind": "test-link", "path": str(a)}, {"kind": "route6", "dst": "2001:db8::/32"}])
    _leave_journal("t7", [{"kind": "test-link", "path": str(b)}])
    assert main(["cleanup"]) == 1
    out, err = capsys.readouterr()
    # The other journal was cleaned up too, and each journal said what it found.
    assert not a.exists() and not b.exists() and not journal.Journal("t7").path.exists()
    assert out.count("did not exit cleanly") == 2, out
    path = journal.Journal("t6").path
    assert err == (f"vpnedu: error: {path} lists 1 change(s) of a kind this vpnedu does not know: "
                   """'route6' {"dst": "2001:db8::/32"}; 1 other change(s) were undone, and these stay in """
                   "the journal; undo them with the vpnedu version that made them ('vpnedu cleanup'), "
                   "or by hand, then delete that file\n")
    # Deleted by hand once undone: the next cleanup has nothing left to do.
    path.unlink()
    assert main(["cleanup"]) == 0
    assert capsys.readouterr().out == "cleanup: nothing to undo\n"
