import zipfile

import pytest

from recs.local.java_build import build, sources


def test_the_jar_holds_every_class_and_builds_byte_for_byte_the_same(tmp_path):
    first, second = tmp_path / "a.jar", tmp_path / "b.jar"
    entries = build(first)
    build(second)
    assert "org/recstream/flink/LastNClicks.class" in entries
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as jar:
        assert jar.namelist() == ["META-INF/MANIFEST.MF", *entries]
    assert all(p.suffix == ".java" for p in sources())


def test_a_compile_error_names_the_file_and_line(tmp_path, monkeypatch):
    bad = tmp_path / "java" / "Bad.java"
    bad.parent.mkdir()
    bad.write_text("public class Bad {\n  int x = ;\n}\n")
    monkeypatch.setattr("recs.local.java_build.JAVA_DIR", bad.parent)
    with pytest.raises(Exception, match=r"Bad\.java.*Line 2"):
        build(tmp_path / "bad.jar")
    assert not (tmp_path / "bad.jar").exists()
