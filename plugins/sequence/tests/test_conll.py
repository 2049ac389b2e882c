"""The CoNLL reader: separators, document lines, final newline, malformed lines named by file:line."""
from __future__ import annotations

from pathlib import Path

import pytest

from deepcourse.api import DataError
from deepcourse_sequence.conll import format_sentence, iter_sentences, read_conll

COLUMNS = ["token", "pos", "chunk", "ner"]


def sentences(path: Path, columns=COLUMNS) -> list[tuple[int, dict[str, list[str]]]]:
    return list(iter_sentences(path, columns))


def test_tab_only_and_whitespace_lines_separate_sentences(tmp_path: Path, write) -> None:
    path = write(tmp_path / "a.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\t\nPeter NNP B-NP B-PER\n   \n"
                                     "Blackburn NNP B-NP B-PER\n\n\n")
    found = sentences(path)
    assert [s["token"] for _, s in found] == [["EU", "rejects"], ["Peter"], ["Blackburn"]]
    assert [line for line, _ in found] == [1, 4, 6]
    assert found[0][1]["ner"] == ["B-ORG", "O"]


def test_unicode_spaces_stay_inside_tokens(tmp_path: Path, write) -> None:
    """Only ASCII spaces and tabs separate columns: a non-breaking space is part of its token."""
    path = write(tmp_path / "a.txt", "10\u00a0000 CD I-NP O\nNew\u2009York NNP I-NP B-LOC\n")
    (_, found), = sentences(path)
    assert found["token"] == ["10\u00a0000", "New\u2009York"]
    assert found["ner"] == ["O", "B-LOC"]


def test_docstart_lines_are_skipped_and_end_a_sentence(tmp_path: Path, write) -> None:
    path = write(tmp_path / "a.txt", "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n-DOCSTART- -X- -X- O\n"
                                     "Peter NNP B-NP B-PER\n")
    assert [s["token"] for _, s in sentences(path)] == [["EU"], ["Peter"]]


def test_missing_final_newline_keeps_last_sentence(tmp_path: Path, write) -> None:
    path = write(tmp_path / "a.txt", "EU NNP B-NP B-ORG\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER")
    assert sentences(path)[-1][1]["token"] == ["Peter", "Blackburn"]


def test_crlf_and_tabs_between_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"EU\tNNP\tB-NP\tB-ORG\r\nrejects VBZ B-VP O\r\n\r\nx y z O\r\n")
    assert [s["token"] for _, s in sentences(path)] == [["EU", "rejects"], ["x"]]


def test_bad_column_count_names_file_and_line(tmp_path: Path, write) -> None:
    path = write(tmp_path / "bad.txt", "EU NNP B-NP B-ORG\n\nPeter NNP B-PER\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: expected 4 columns \(token pos chunk ner\), found 3"):
        sentences(path)
    with pytest.raises(DataError, match=r"bad\.txt:3: expected 4 columns"):
        read_conll(path, COLUMNS)  # not wrapped by datasets' own errors


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("EU NNP B-NP B-ORG\n\nM\u00fcller NNP B-NP B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt:3: not valid UTF-8"):
        sentences(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_conll(tmp_path / "nope.txt", COLUMNS)
    with pytest.raises(DataError, match="is a folder"):
        sentences(tmp_path)


def test_tokens_only_mode_keeps_first_column(tmp_path: Path, write) -> None:
    path = write(tmp_path / "a.txt", "EU NNP\nrejects\n\nPeter a b c d e\n")
    assert [s for _, s in iter_sentences(path, None)] == [{"token": ["EU", "rejects"]}, {"token": ["Peter"]}]


def test_read_conll_is_a_cached_dataset(tmp_path: Path, write) -> None:
    path = write(tmp_path / "a.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    ds = read_conll(path, COLUMNS)
    assert ds.column_names == [*COLUMNS, "line"]
    assert ds[1] == {"token": ["Peter"], "pos": ["NNP"], "chunk": ["B-NP"], "ner": ["B-PER"], "line": 4}
    assert len(ds.cache_files) >= 1
    assert read_conll(path, COLUMNS, cache=False).to_dict() == ds.to_dict()
    write(path, "Changed NNP B-NP O\n")  # the cache is keyed by size and mtime: edits are seen
    assert read_conll(path, COLUMNS)[0]["token"] == ["Changed"]


def test_empty_file_gives_empty_dataset(tmp_path: Path, write) -> None:
    assert len(read_conll(write(tmp_path / "e.txt", "\n\n-DOCSTART- -X- -X- O\n"), COLUMNS)) == 0


def test_format_sentence() -> None:
    assert format_sentence([["EU", "rejects"], ["B-ORG", "O"]]) == "EU B-ORG\nrejects O"
