"""A manifest that is not UTF-8 is one line naming the encoding it has and the command that
converts it (a spreadsheet's "Unicode text" is UTF-16, not the Latin-1 the advice used to assume)."""

from __future__ import annotations

import codecs

import pytest

from lungcls.data.samples.csvtext import open_csv
from lungcls.errors import LungclsError

TEXT = "path,label\nCOVID/a.png,COVID\nNormal/Pneumonía b.png,Normal\n"


@pytest.mark.parametrize("data, encoding", [
    (codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), "UTF-16"),  # what a spreadsheet's "Unicode text" writes
    (TEXT.encode("utf-16-le"), "UTF-16LE"),
    (TEXT.encode("utf-16-be"), "UTF-16BE"),
    (TEXT.encode("utf-32"), "UTF-32"),
    (TEXT.encode("latin-1"), "LATIN1"),
    ("path,label\n\u201cx\u201d.png,COVID\n".encode("cp1252"), "CP1252"),
])
def test_a_manifest_in_another_encoding_names_it(tmp_path, data, encoding):
    path = tmp_path / "manifest.csv"
    path.write_bytes(data)
    with pytest.raises(LungclsError, match=f"manifest .*manifest.csv is not UTF-8 text .*iconv -f {encoding} -t utf-8") as e:
        open_csv(path)
    assert "\n" not in str(e.value)
    converted = tmp_path / "converted.csv"
    converted.write_bytes(data.decode(encoding.replace("LATIN1", "latin-1")).encode("utf-8"))
    assert open_csv(converted).read().lstrip("\ufeff").startswith("path,label")  # the advice works


def test_ascii_utf16_is_not_read_as_text_with_nul_characters(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes("path,label\na.png,COVID\n".encode("utf-16-le"))  # valid UTF-8 bytes, every other one NUL
    with pytest.raises(LungclsError, match="it is UTF-16LE"):
        open_csv(path)
