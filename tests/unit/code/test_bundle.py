"""Packing a job's code (flexorch_provider/code.py) and keeping it on a host (runner/code.py)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from flexorch_provider.code import collect
from flexorch_provider.exceptions import SpecError
from flexorch_provider.resolve import load_workload
from flexorch_provider.runner import code as kept

MiB = 2**20


def tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def paths(root: Path, exclude: list[str] | None = None) -> list[str]:
    return [f.path for f in collect(root, exclude or [], 64 * MiB).files]


def test_gitignore_files_at_every_depth_and_the_specs_excludes_leave_files_out(tmp_path):
    tree(tmp_path, {
        "train.py": "print(1)", ".gitignore": "data/\n*.ckpt\n!keep.ckpt\n", "keep.ckpt": "k", "model.ckpt": "m",
        "data/big.bin": "x", "src/util.py": "u", "src/.gitignore": "local.py\n", "src/local.py": "l",
        "other/local.py": "o", "notes/todo.md": "t", ".git/HEAD": "ref", "src/__pycache__/util.cpython-311.pyc": "c",
    })  # fmt: skip
    assert paths(tmp_path, ["notes/"]) == [".gitignore", "keep.ckpt", "other/local.py", "src/.gitignore",
                                            "src/util.py", "train.py"]  # fmt: skip


def test_the_same_tree_gives_the_same_digest_and_bytes_anywhere_and_an_edit_another(tmp_path):
    a = tree(tmp_path / "a", {"train.py": "print(1)\n", "run.sh": "#!/bin/sh\n", "lib/x.py": "x = 1\n"})
    b = tree(tmp_path / "b", {"lib/x.py": "x = 1\n", "run.sh": "#!/bin/sh\n", "train.py": "print(1)\n"})
    (a / "run.sh").chmod(0o755)
    (b / "run.sh").chmod(0o700)  # only the executable bit counts
    os.utime(b / "train.py", (1, 1))
    (b / "lib").chmod(0o700)
    one, two = collect(a, [], MiB), collect(b, [], MiB)
    assert one.digest == two.digest and one.tarball() == two.tarball()
    (b / "train.py").write_text("print(2)\n")
    assert collect(b, [], MiB).digest != one.digest
    (b / "train.py").write_text("print(1)\n")
    (b / "run.sh").chmod(0o600)
    assert collect(b, [], MiB).digest != one.digest


def test_links_inside_are_packed_as_files_links_outside_are_left_out(tmp_path):
    root = tree(tmp_path / "code", {"conf/base.yaml": "a: 1\n"})
    (tmp_path / "secret").write_text("s")
    (root / "config.yaml").symlink_to("conf/base.yaml")
    (root / "leak").symlink_to(tmp_path / "secret")
    (root / "all").symlink_to(tmp_path)
    bundle = collect(root, [], MiB)
    assert [f.path for f in bundle.files] == ["conf/base.yaml", "config.yaml"]
    assert bundle.skipped == ["all/ (a link to a folder)", "leak (a link outside the folder)"]


def test_a_folder_over_the_cap_is_refused_naming_its_largest_files(tmp_path):
    tree(tmp_path, {"train.py": "x", "weights.bin": b"\0" * (3 * MiB), "data.csv": b"1" * (2 * MiB)})
    with pytest.raises(SpecError) as refused:
        collect(tmp_path, [], 4 * MiB)
    text = str(refused.value)
    assert "holds 5.0 MiB to send, over code.max_size (4.0 MiB); the largest: weights.bin (3.0 MiB), " in text
    assert "add them to code.exclude or .gitignore, or raise code.max_size" in text
    assert [f.path for f in collect(tmp_path, ["*.bin"], 4 * MiB).files] == ["data.csv", "train.py"]


def test_code_must_stay_in_the_specs_folder_and_is_refused_on_kubernetes():
    base = {"name": "t", "kind": "batch", "run": "python train.py"}
    assert load_workload({**base, "code": "."}).code.path == "."
    for path in ("../other", "/etc", "a/../../b"):
        with pytest.raises(SpecError, match="leaves the spec's folder"):
            load_workload({**base, "code": {"path": path}})
    with pytest.raises(SpecError, match="the kubernetes target takes code from git only"):
        load_workload({**base, "code": ".", "target": "kubernetes", "image": "python:3.11"})


# --- on the host --------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_host_keeps_a_bundle_once_and_each_run_gets_its_own_copy(tmp_path, home):
    bundle = collect(tree(tmp_path / "code", {"train.py": "print(1)\n", "lib/x.py": "x\n"}), [], MiB)
    assert not kept.has(bundle.digest)
    out = kept.put(bundle.digest, io.BytesIO(bundle.tarball()))
    assert out["received"] and out["files"] == 2 and kept.has(bundle.digest)
    assert kept.put(bundle.digest, io.BytesIO(b""))["received"] is False  # there already: nothing read
    run = tmp_path / "run"
    run.mkdir()
    copy = Path(kept.checkout(bundle.digest, str(run)))
    assert (copy / "lib" / "x.py").read_text() == "x\n"
    original = home / ".flexorch" / "code" / bundle.digest / "train.py"
    assert os.stat(copy / "train.py").st_ino == original.stat().st_ino and original.stat().st_mode & 0o222 == 0
    (copy / "out.txt").write_text("a run may add files")  # and replace them: the kept one stays
    (copy / "train.py").unlink()
    (copy / "train.py").write_text("changed")
    assert original.read_text() == "print(1)\n"


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = (len(data) if kind == tarfile.REGTYPE else 0), kind, link
    return info, data


@pytest.mark.parametrize(
    "members, says",
    [
        ([member("../escape.py")], "not a plain file inside it"),
        ([member("/etc/cron.d/x")], "not a plain file inside it"),
        ([member("a/./b")], "not a plain file inside it"),
        ([member("link", kind=tarfile.SYMTYPE, link="/etc/passwd")], "not a plain file inside it"),
        ([member("hard", kind=tarfile.LNKTYPE, link="x")], "not a plain file inside it"),
        ([member("dev", kind=tarfile.CHRTYPE)], "not a plain file inside it"),
        ([member("x.py"), member("x.py")], "holds x.py twice"),
    ],
)
def test_a_hostile_or_changed_bundle_is_refused_and_nothing_is_kept(tmp_path, home, members, says):
    from flexorch_provider.runner.code import digest_of

    digest = digest_of([("x.py", False, "0" * 64)])
    with pytest.raises(kept.CodeError, match=says):
        kept.put(digest, io.BytesIO(tar_of(members)))
    assert not kept.has(digest) and not (tmp_path / "escape.py").exists()
    assert os.listdir(home / ".flexorch" / "code") == []  # no half-received folder either


def test_a_bundle_whose_files_do_not_give_its_digest_is_refused(tmp_path, home):
    bundle = collect(tree(tmp_path / "code", {"train.py": "print(1)\n"}), [], MiB)
    other = collect(tree(tmp_path / "evil", {"train.py": "import os; os.system('curl ...')\n"}), [], MiB)
    with pytest.raises(kept.CodeError, match="it was changed on the way"):
        kept.put(bundle.digest, io.BytesIO(other.tarball()))
    assert not kept.has(bundle.digest)
