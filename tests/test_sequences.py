"""Sequence files: FASTA edge cases, gzip, one-hot arrays, length fitting."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from ismkernel.errors import InputError
from ismkernel.io.sequences import encode, fit_length, open_sequences


def _fasta(tmp_path, text, name="in.fa", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def _all(source, size=2):
    parts = list(source.batches(size))
    return np.concatenate([i for i, _ in parts]), np.concatenate([x for _, x in parts])


def test_encode_is_acgt_one_hot_and_case_insensitive():
    x = encode("ACGTacgtUu")
    np.testing.assert_array_equal(x[:4], np.eye(4))
    np.testing.assert_array_equal(x[4:8], np.eye(4))
    np.testing.assert_array_equal(x[8], x[3])  # U reads as T
    np.testing.assert_array_equal(x[9], x[3])


@pytest.mark.parametrize("n_as,row", [("zero", 0.0), ("uniform", 0.25)])
def test_n_and_iupac_codes(n_as, row):
    x = encode("NnRYKMSWBDHV", n_as)
    np.testing.assert_array_equal(x, np.full((12, 4), row, np.float32))


def test_windows_line_endings_multiline_records_and_lowercase(tmp_path):
    path = _fasta(tmp_path, ">a desc\nACGT\nacgt\n\n>b\nTTTT\nGGGG\n", newline="\r\n")
    src = open_sequences(path, 8)
    assert src.names == ["a", "b"]
    idx, x = _all(src)
    assert idx.tolist() == [0, 1]
    np.testing.assert_array_equal(x[0], encode("ACGTACGT"))
    np.testing.assert_array_equal(x[1], encode("TTTTGGGG"))


def test_gzipped_fasta_is_read_by_content(tmp_path):
    path = tmp_path / "in.txt"  # the name says nothing
    with gzip.open(path, "wt") as f:
        f.write(">a\nACGTN\n")
    _, x = _all(open_sequences(path, 5))
    np.testing.assert_array_equal(x[0, 4], np.zeros(4))


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "holds no sequences"),
        ("\n\n", "holds no sequences"),
        (">a\nACGT\n>b\n>c\nACGT\n", "line 3: record 'b' has no sequence"),
        (
            ">a\nACGT\n>a\nACGT\n",
            "line 3: duplicate sequence name 'a' \\(first at line 1\\)",
        ),
        ("ACGT\nACGT\n", "line 1 does not start a FASTA record"),
        ("name\tvalue\n1\t2\n", "line 1 does not start a FASTA record"),
        (">a\nAC-T\n", "line 2, column 3: invalid character '-' in record 'a'"),
        (">a\nAC1T\n", "line 2, column 3: invalid character '1'"),
        (">\nACGT\n", "line 1: a FASTA header with no name"),
        (
            ">a\nACG\n",
            "line 1: sequence 'a' has length 3 but the model takes 4; pass --center",
        ),
    ],
)
def test_fasta_errors_name_the_line(tmp_path, text, match):
    path = _fasta(tmp_path, text)
    with pytest.raises(InputError, match=match):
        open_sequences(path, 4)


def test_binary_file_is_not_a_fasta(tmp_path):
    path = tmp_path / "x.fa"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match="does not start a FASTA record"):
        open_sequences(path, 4)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_sequences(tmp_path / "nope.fa", 4)


def test_center_crops_and_pads_around_the_centre(tmp_path):
    path = _fasta(tmp_path, ">long\nAACGTTT\n>short\nCG\n")
    src = open_sequences(path, 4, center=True, n_as="uniform")
    _, x = _all(src)
    np.testing.assert_array_equal(x[0], encode("ACGT"))  # (7 - 4) // 2 = 1 cut left
    np.testing.assert_array_equal(x[1], encode("NCGN", "uniform"))


def test_fit_length_odd_padding_goes_right():
    x = fit_length(encode("CG"), 5, True, "s")
    np.testing.assert_array_equal(x, encode("NCGNN"))


def test_free_length_model_takes_one_length_per_run(tmp_path):
    path = _fasta(tmp_path, ">a\nACGT\n>b\nACGTA\n")
    with pytest.raises(InputError, match="lengths \\[4, 5\\]"):
        open_sequences(path, None)
    assert open_sequences(_fasta(tmp_path, ">a\nACG\n", "b.fa"), None).length == 3


@pytest.mark.parametrize("layout", ["nlc", "ncl"])
def test_one_hot_npy_and_npz(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (3, 10))]
    stored = x if layout == "nlc" else x.transpose(0, 2, 1)
    np.save(tmp_path / "x.npy", stored)
    src = open_sequences(tmp_path / "x.npy", 10)
    assert src.names == ["seq0", "seq1", "seq2"]
    np.testing.assert_array_equal(_all(src)[1], x)
    np.savez(tmp_path / "x.npz", onehot=stored, names=np.array(["a", "b", "c"]))
    src = open_sequences(tmp_path / "x.npz", 10)
    assert src.names == ["a", "b", "c"]
    np.testing.assert_array_equal(_all(src, 5)[1], x)


def test_bad_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 10, 5)))
    with pytest.raises(InputError, match="expected one-hot sequences"):
        open_sequences(tmp_path / "a.npy", 10)
    np.savez(tmp_path / "b.npz", other=np.zeros((2, 10, 4)))
    with pytest.raises(InputError, match="expected one named 'x', 'onehot' or 'arr_0'"):
        open_sequences(tmp_path / "b.npz", 10)
    np.save(tmp_path / "c.npy", np.full((1, 10, 4), np.nan))
    with pytest.raises(InputError, match="NaN"):
        open_sequences(tmp_path / "c.npy", 10)


def test_selected_batches_stream_in_file_order(tmp_path):
    text = "".join(f">s{i}\n{'ACGT'[i % 4] * 4}\n" for i in range(7))
    src = open_sequences(_fasta(tmp_path, text), 4)
    got = [
        (i.tolist(), x[:, 0].argmax(-1).tolist()) for i, x in src.batches(2, [1, 2, 5])
    ]
    assert got == [([1, 2], [1, 2]), ([5], [1])]


@pytest.mark.parametrize("zipped", [False, True])
def test_utf8_byte_order_mark_is_skipped(tmp_path, zipped):
    text = b"\xef\xbb\xbf>a\nACGT\n"
    path = tmp_path / "bom.fa"
    path.write_bytes(gzip.compress(text) if zipped else text)
    source = open_sequences(path, 4)
    assert source.names == ["a"]
    np.testing.assert_array_equal(_all(source)[1][0], np.eye(4, dtype=np.float32))


def test_utf16_text_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "u16.fa"
    path.write_bytes(">a\nACGT\n".encode("utf-16"))
    with pytest.raises(InputError, match="is UTF-16 text; save it as plain text"):
        open_sequences(path, 4)
