"""Log splitting and secret masking: one implementation for the runner (bytes) and the package (text)."""

from __future__ import annotations

from flexorch_provider.runner.logs import MASK, Masker, complete_lines, mask_text, read_log


def test_complete_lines_wait_for_a_newline_and_split_a_huge_line():
    assert complete_lines(b"a\nb\npart") == (["a", "b"], 4)
    assert complete_lines(b"partial") == ([], 0)
    assert complete_lines(b"x" * 100, limit=40) == (["x" * 40], 40)
    assert complete_lines(b"caf\xc3\xa9 \xff\n") == (["café \ufffd"], 8)


def test_read_log_moves_the_cursor_past_the_last_complete_line(tmp_path):
    (tmp_path / "log").write_bytes(b"one\ntwo\nthr")
    assert read_log(str(tmp_path), 0) == (["one", "two"], 8)
    assert read_log(str(tmp_path), 8) == ([], 8)
    assert read_log(str(tmp_path / "gone"), 5) == ([], 5)


def test_masking_is_the_same_for_text_and_bytes():
    masker = Masker(["hunter2-long", "hunter2", "abc", "pässwörd"])
    assert masker.values == ["hunter2-long", "pässwörd", "hunter2"]  # longest first, short ones ignored
    line = "a=hunter2-long b=hunter2 c=abc d=pässwörd"
    assert masker(line) == f"a={MASK} b={MASK} c=abc d={MASK}"
    assert masker.mask_bytes(line.encode()) == masker(line).encode()
    assert mask_text(["hunter2"], "x hunter2 hunter2") == "x *** ***"
    assert Masker([])("nothing to hide") == "nothing to hide"


def test_tail_gives_the_last_complete_lines_and_the_cursor_to_follow_from(tmp_path, monkeypatch):
    from flexorch_provider.runner import logs

    (tmp_path / "log").write_bytes(b"one\ntwo\nthree\npart")
    assert logs.tail_log(str(tmp_path), 2) == (["two", "three"], 14)
    assert logs.read_log(str(tmp_path), 14) == ([], 14)  # the partial line comes with its newline
    assert logs.tail_log(str(tmp_path), 0) == ([], 14)
    assert logs.tail_log(str(tmp_path / "gone"), 5) == ([], 0)
    monkeypatch.setattr(logs, "TAIL_READ", 11)  # a read from the middle drops the piece of a line it starts in
    assert logs.tail_log(str(tmp_path), 5) == (["three"], 14)
    monkeypatch.setattr(logs, "TAIL_READ", 9)  # "hree" is only the end of a line
    assert logs.tail_log(str(tmp_path), 5) == ([], 14)
