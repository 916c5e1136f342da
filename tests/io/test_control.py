"""The control folder: requests written atomically, read oldest first, handled once even when their file stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astrod.io.control import ControlInbox, write_request


def test_requests_are_read_oldest_first_and_removed_when_done(tmp_path: Path) -> None:
    """Two close requests come back in the order they were written, with their data; done() removes each file
    and names it in ``handled``; nothing is left to poll."""
    folder = tmp_path / "control"
    first = write_request(folder, {"action": "close", "session": "a"})
    second = write_request(folder, {"action": "close", "session": None})
    assert first.parent == folder and first.name.startswith("close-") and first.suffix == ".json"
    assert json.loads(first.read_text()) == {"action": "close", "session": "a"}
    inbox = ControlInbox(folder)
    requests = inbox.poll()
    assert [(r.name, r.data) for r in requests] == [(first.name, {"action": "close", "session": "a"}),
                                                    (second.name, {"action": "close", "session": None})]
    for request in requests:
        assert inbox.done(request) is None
    assert not first.exists() and not second.exists()
    assert inbox.handled == [first.name, second.name]
    assert inbox.poll() == []


def test_a_missing_folder_has_no_requests(tmp_path: Path) -> None:
    """No control folder yet (no request was ever written): no requests, no error."""
    assert ControlInbox(tmp_path / "control").poll() == []


def test_unreadable_and_non_object_requests_are_reported_with_the_reason(tmp_path: Path) -> None:
    """Broken JSON and a JSON list come back with data None and the reason, so the daemon can log them; other
    files than *.json are not requests."""
    folder = tmp_path / "control"
    folder.mkdir()
    (folder / "a.json").write_text("{not json", encoding="utf-8")
    (folder / "b.json").write_text("[1, 2]", encoding="utf-8")
    (folder / "notes.txt").write_text("not a request", encoding="utf-8")
    broken, listed = ControlInbox(folder).poll()
    assert broken.name == "a.json" and broken.data is None and broken.error
    assert listed.name == "b.json" and listed.data is None and listed.error == "not a JSON object"


def test_a_request_that_cannot_be_removed_is_handled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handled request whose file cannot be removed (a folder the daemon may not write): done() says why,
    naming the file; the request is in ``handled`` and never polled again, while newer requests still are."""
    folder = tmp_path / "control"
    stuck = write_request(folder, {"action": "close", "session": None})
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    inbox = ControlInbox(folder)
    (request,) = inbox.poll()
    problem = inbox.done(request)
    assert problem is not None and str(stuck) in problem and "Permission denied" in problem
    assert stuck.exists() and inbox.handled == [stuck.name]
    for _ in range(3):
        assert inbox.poll() == []
    later = write_request(folder, {"action": "close", "session": "b"})
    assert [r.name for r in inbox.poll()] == [later.name]


def test_handled_names_are_bounded(tmp_path: Path) -> None:
    """Only the last KEEP handled names are listed (the status file stays small)."""
    folder = tmp_path / "control"
    inbox = ControlInbox(folder)
    names = []
    for i in range(ControlInbox.KEEP + 5):
        path = folder / f"close-{i:04d}.json"
        folder.mkdir(exist_ok=True)
        path.write_text(json.dumps({"action": "close"}), encoding="utf-8")
        (request,) = inbox.poll()
        inbox.done(request)
        names.append(path.name)
    assert inbox.handled == names[-ControlInbox.KEEP:]
