"""Variant scoring and genome regions on a tiny synthetic genome, in process
and on a local Dask cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_fasta

import ismkernel
from ismkernel.errors import InputError
from ismkernel.io.genome import read_vcf
from ismkernel.io.results import load_results
from ismkernel.io.sequences import encode
from ismkernel.job import EXAMPLE_MODEL, IsmJob, run_job
from ismkernel.variants import score_variants, write_h5, write_tsv

pytest.importorskip("pyfaidx")
GENOME = Path(__file__).parent / "fixtures" / "genome"
L = 200


@pytest.fixture()
def files(tmp_path):
    """The fixtures in a scratch directory (pyfaidx writes its index there)."""
    for name in ("genome.fa", "variants.vcf", "regions.bed"):
        shutil.copy(GENOME / name, tmp_path / name)
    return tmp_path


@pytest.fixture(scope="module")
def model():
    return ismkernel.load_model(EXAMPLE_MODEL)


def _contigs() -> dict[str, str]:
    """The genome read here by hand, not through pyfaidx."""
    out: dict[str, str] = {}
    name = None
    for line in open(GENOME / "genome.fa"):
        line = line.strip()
        if line.startswith(">"):
            name = line[1:].split()[0]
            out[name] = ""
        else:
            out[name] += line
    return out


def _window(chrom: str, pos: int, alt: str | None = None) -> np.ndarray:
    seq = _contigs()[chrom]
    start = pos - 1 - L // 2
    window = list(seq[start : start + L])
    if alt is not None:
        window[L // 2] = alt
    return encode("".join(window))


EXPECTED_SKIPS = {
    "del": "indel TT>T",
    "ins": "indel C>CA",
    "mnv": "multi-nucleotide variant",
    "mismatch": "REF C does not match the genome base A at chr1:430",
    "nocontig": "contig 'chrX' is not in the genome",
    "left_edge": "runs off contig 'chr1'",
    "right_edge": "runs off contig 'chr2' (length 500)",
    "n_alt": "allele 'N' is not A, C, G or T",
    "same": "ALT equals REF",
    "symbolic": "'<DEL>' is not a sequence allele",
    "n_ref": "allele 'N' is not A, C, G or T",
}


def test_scores_equal_explicit_predictions(files, model):
    res = score_variants(model, files / "variants.vcf", files / "genome.fa")
    scored = [i for i, s in enumerate(res.status) if s == "scored"]
    assert len(scored) == 8
    refs = np.stack(
        [_window(res.variants[i].chrom, res.variants[i].pos) for i in scored]
    )
    alts = np.stack(
        [
            _window(res.variants[i].chrom, res.variants[i].pos, res.variants[i].alt)
            for i in scored
        ]
    )
    (p_ref,) = model.predict(refs)
    (p_alt,) = model.predict(alts)
    np.testing.assert_allclose(res.reference[0][scored], p_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.alternative[0][scored], p_alt, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        res.scores[0][scored], p_alt - p_ref, rtol=1e-4, atol=1e-5
    )
    # Alleles of one record, and records at one position, share one window.
    assert res.stats["n_windows"] == 5


def test_every_skip_reason_and_the_order(files, model):
    res = score_variants(model, files / "variants.vcf", files / "genome.fa")
    ids = [v.id for v in res.variants]
    # VCF order, the multi-allelic record split in place.
    assert ids[:5] == ["ap1_T", "ap1_C", "ap1_C", "ap1_C", "bg1"]
    assert [v.alt for v in res.variants[1:4]] == ["A", "G", "T"]
    for v, status, reason, score in zip(
        res.variants, res.status, res.reason, res.scores[0]
    ):
        if v.id in EXPECTED_SKIPS:
            assert status == "skipped" and EXPECTED_SKIPS[v.id] in reason, (
                v.id,
                reason,
            )
            assert np.isnan(score).all()
        else:
            assert status == "scored" and reason == "" and np.isfinite(score).all()


def test_motif_variants_hurt_and_background_ones_do_not(files, model):
    res = score_variants(model, files / "variants.vcf", files / "genome.fa")
    by_id = {}
    for v, s in zip(res.variants, res.scores[0][:, 0]):
        by_id.setdefault(v.id, []).append(s)
    assert max(by_id["ap1_T"] + by_id["ap1_C"] + by_id["gata_G"]) < -3
    assert abs(by_id["bg1"][0]) < 1


def test_reverse_complement_averaging(files, model):
    res = score_variants(model, files / "variants.vcf", files / "genome.fa", rc=True)
    i = [v.id for v in res.variants].index("gata_G")
    v = res.variants[i]
    fwd_ref, fwd_alt = _window(v.chrom, v.pos), _window(v.chrom, v.pos, v.alt)
    batch = np.stack([fwd_ref, fwd_alt, fwd_ref[::-1, ::-1], fwd_alt[::-1, ::-1]])
    (p,) = model.predict(batch)
    np.testing.assert_allclose(
        res.reference[0][i], (p[0] + p[2]) / 2, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        res.alternative[0][i], (p[1] + p[3]) / 2, rtol=1e-5, atol=1e-5
    )


def test_variant_reducers(files, model):
    res = score_variants(
        model, files / "variants.vcf", files / "genome.fa", reduce="raw"
    )
    ok = np.array(res.status) == "scored"
    np.testing.assert_array_equal(res.scores[0][ok], res.alternative[0][ok])
    with pytest.raises(InputError, match="log2fc needs positive outputs"):
        score_variants(
            model, files / "variants.vcf", files / "genome.fa", reduce="log2fc"
        )
    with pytest.raises(InputError, match="use one of"):
        score_variants(model, files / "variants.vcf", files / "genome.fa", reduce="l2")


def test_tsv_and_h5_outputs_keep_identifiers_and_order(files, model):
    res = score_variants(model, files / "variants.vcf", files / "genome.fa")
    write_tsv(res, str(files / "out.tsv"))
    rows = [line.rstrip("\n").split("\t") for line in open(files / "out.tsv")]
    assert rows[0][:7] == ["chrom", "pos", "id", "ref", "alt", "status", "reason"]
    assert rows[0][7:] == ["motif_logit_ref", "motif_logit_alt", "motif_logit_delta"]
    assert [r[2] for r in rows[1:]] == [v.id for v in read_vcf(files / "variants.vcf")]
    write_h5(res, str(files / "out.h5"), {"reduce": "delta"})
    import h5py

    with h5py.File(files / "out.h5") as f:
        assert [x.decode() for x in f["id"][:]] == [v.id for v in res.variants]
        np.testing.assert_array_equal(f["outputs/motif_logit/scores"][:], res.scores[0])


def test_variants_command_line(files):
    out = files / "out.tsv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ismkernel",
            "variants",
            EXAMPLE_MODEL,
            "--vcf",
            files / "variants.vcf",
            "--genome",
            files / "genome.fa",
            "-o",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 variant(s) scored in 5 window(s), 11 skipped" in proc.stderr
    assert len(out.read_text().splitlines()) == 20


def test_vcf_errors(tmp_path):
    bad = tmp_path / "bad.vcf"
    bad.write_text("#CHROM\tPOS\tID\tREF\tALT\nchr1\tx\t.\tA\tC\n")
    with pytest.raises(InputError, match="line 2: POS 'x' is not an integer"):
        read_vcf(bad)
    bad.write_text("chr1 100 . A C\n")
    with pytest.raises(InputError, match="line 1: a VCF record needs at least 5"):
        read_vcf(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_vcf(tmp_path / "nope.vcf")


def test_ism_over_bed_regions(files, model):
    out = files / "regions.h5"
    run_job(
        IsmJob(
            EXAMPLE_MODEL,
            None,
            str(out),
            bed=str(files / "regions.bed"),
            genome=str(files / "genome.fa"),
            quiet=True,
            positions="90:110",
        )
    )
    res = load_results(out)
    assert res["names"] == ["ap1_region", "gata_region", "chr2:200-300"]
    seqs = _contigs()
    x = np.stack(
        [
            encode(seqs[c][(s + e) // 2 - L // 2 : (s + e) // 2 - L // 2 + L])
            for c, s, e in (("chr1", 250, 350), ("chr1", 680, 730), ("chr2", 200, 300))
        ]
    )
    np.testing.assert_array_equal(res["onehot"], x)
    want = ismkernel.ism(model, x, positions=np.arange(90, 110)).delta()[0]
    np.testing.assert_allclose(
        res["outputs"]["motif_logit"]["scores"], want, rtol=1e-5, atol=1e-6
    )


def test_bed_region_off_the_contig(files):
    (files / "edge.bed").write_text("chr2\t0\t40\tedge\n")
    with pytest.raises(InputError, match="line 1: region 'edge': the 200-bp window"):
        run_job(
            IsmJob(
                EXAMPLE_MODEL,
                None,
                str(files / "o.h5"),
                bed=str(files / "edge.bed"),
                genome=str(files / "genome.fa"),
                quiet=True,
            )
        )


# -- Dask ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    from ismkernel.distributed import cluster_client

    with cluster_client(workers=2) as client:  # worker processes on loopback
        yield client


def test_dask_variants_equal_in_process(files, model, cluster):
    # The same batches of windows in both, so the same arithmetic.
    local = score_variants(
        model, files / "variants.vcf", files / "genome.fa", windows_per_batch=2
    )
    remote = score_variants(
        model,
        files / "variants.vcf",
        files / "genome.fa",
        client=cluster,
        windows_per_batch=2,
    )
    assert remote.status == local.status and remote.reason == local.reason
    for a, b in zip(local.scores + local.reference, remote.scores + remote.reference):
        np.testing.assert_array_equal(a, b)


def test_dask_ism_python_api(model, cluster):
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(0).integers(0, 4, (9, L))]
    local = ismkernel.ism(model, x, positions=np.arange(0, 200, 7), reduce="delta")
    remote = ismkernel.ism(
        model, x, positions=np.arange(0, 200, 7), reduce="delta", client=cluster
    )
    assert remote.stats["n_chunks"] > 1
    # Chunks of other sizes than the in-process run's block a GEMM otherwise,
    # so values may differ in the last bit; the job and variant tests above
    # use the same batches both ways and are bit-identical.
    scale = float(np.abs(local.outputs[0]).max())
    for a, b in zip(local.outputs + local.scores, remote.outputs + remote.scores):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * scale)


def test_dask_job_survives_a_killed_worker(tmp_path, cluster):
    """A worker dies mid-run; Dask recomputes its chunks elsewhere and the file
    equals an in-process run's."""
    fasta = random_fasta(tmp_path / "many.fa", 40, L, seed=5)
    common = dict(positions="0:40", seqs_per_batch=2, quiet=True)
    run_job(IsmJob(EXAMPLE_MODEL, str(fasta), str(tmp_path / "local.h5"), **common))

    import ismkernel.job as job_module

    killed = []
    original = job_module._bar

    class KillingBar:
        """The progress hook: after the first batch, kill a worker process."""

        def __init__(self, *a, **k):
            self.n = 0

        def update(self, n):
            self.n += 1
            if self.n == 1 and not killed:
                workers = list(cluster.scheduler_info()["workers"])
                try:
                    cluster.run(lambda: __import__("os")._exit(1), workers=[workers[0]])
                except Exception:
                    pass  # the worker dies before it can answer
                killed.append(workers[0])

        def close(self):
            pass

    job_module._bar = KillingBar
    try:
        run_job(
            IsmJob(EXAMPLE_MODEL, str(fasta), str(tmp_path / "dask.h5"), **common),
            client=cluster,
        )
    finally:
        job_module._bar = original
    assert killed
    a, b = load_results(tmp_path / "local.h5"), load_results(tmp_path / "dask.h5")
    assert b["done"].all()
    np.testing.assert_array_equal(
        a["outputs"]["motif_logit"]["scores"], b["outputs"]["motif_logit"]["scores"]
    )


def test_command_line_on_an_existing_scheduler(tmp_path, cluster):
    """``--scheduler`` sends the batches to a running cluster; the file equals
    an in-process run's."""
    address = cluster.scheduler.address
    common = ["--example", "--positions", "0:30", "--seqs-per-batch", "3", "-q"]
    for out, extra in (("local.h5", []), ("remote.h5", ["--scheduler", address])):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ismkernel",
                "ism",
                "-o",
                tmp_path / out,
                *common,
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    a, b = load_results(tmp_path / "local.h5"), load_results(tmp_path / "remote.h5")
    np.testing.assert_array_equal(
        a["outputs"]["motif_logit"]["scores"], b["outputs"]["motif_logit"]["scores"]
    )


def test_gzipped_vcf_reads_the_same(files):
    import gzip

    with (
        open(files / "variants.vcf", "rb") as src,
        gzip.open(files / "v.vcf.gz", "wb") as dst,
    ):
        dst.write(src.read())
    assert read_vcf(files / "v.vcf.gz") == read_vcf(files / "variants.vcf")


def test_header_only_vcf_scores_to_an_empty_result(files, model):
    vcf = files / "header.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    res = score_variants(model, vcf, files / "genome.fa", memory_budget="256M")
    assert res.variants == [] and res.stats["n_scored"] == 0
    assert res.scores[0].shape == (0, 1)
    write_tsv(res, str(files / "empty.tsv"))
    assert len((files / "empty.tsv").read_text().splitlines()) == 1


def test_genome_reads_are_checked(files, monkeypatch):
    from ismkernel.io.genome import Genome, RegionSource

    genome = Genome(files / "genome.fa")
    with pytest.raises(
        InputError,
        match=r"gave 10 bases for chr1:\[1190, 1210\) instead of 20; its index "
        r"'.*genome\.fa\.fai' does not match it",
    ):
        genome.fetch("chr1", 1190, 1210)
    with pytest.raises(InputError, match="is a directory, not a FASTA file"):
        Genome(files)

    def broken(self, chrom, start, end):
        raise InputError("broken read")

    monkeypatch.setattr(Genome, "fetch", broken)
    source = RegionSource(files / "regions.bed", files / "genome.fa", L)
    with pytest.raises(
        InputError, match=r"'.*regions\.bed' line 1: region 'ap1_region': broken read"
    ):
        list(source.batches(2))


def _splice_like(seed: int) -> ismkernel.Model:
    """A SpliceAI-shaped toy: free length, 'same' convolutions, a central
    crop of 5 rows either side, softmax over 3 channels."""
    from random_graphs import Builder

    from ismkernel.ir import nodes as ops

    b = Builder(None, seed=seed)
    c = b.conv(b.seq, 6, 5)
    r = b.add(ops.Activation("relu"), [c])
    c2 = b.conv(r, 3, 7, dilation=2)
    crop = b.add(ops.Crop1D(5, 5), [c2])
    out = b.add(ops.Activation("softmax"), [crop])
    b.g.outputs = b.g.output_names = [out]
    return ismkernel.Model(b.g, path=f"splice{seed}.h5")


def _windows(chrom: str, pos: int, alt: str, length: int):
    seq = _contigs()[chrom]
    start = pos - 1 - length // 2
    window = list(seq[start : start + length])
    ref = encode("".join(window))
    window[length // 2] = alt
    return ref, encode("".join(window))


def test_spliceai_scores_of_an_ensemble_equal_explicit_predictions(files):
    """Members averaged before reducing, windows of 41 (31 output rows), the
    rows within 3 of the variant: against each member's Model.predict on the
    explicit reference and alternative windows."""
    members = [_splice_like(1), _splice_like(2)]
    res = score_variants(
        members,
        files / "variants.vcf",
        files / "genome.fa",
        reduce="spliceai",
        around=3,
        length=41,
    )
    (scores,) = res.scores
    assert scores.shape == (len(res.variants), 8)
    n_scored = 0
    for i, v in enumerate(res.variants):
        if res.status[i] != "scored":
            assert np.isnan(scores[i]).all()
            continue
        n_scored += 1
        ref_w, alt_w = _windows(v.chrom, v.pos, v.alt, 41)
        y_ref = np.mean([m.predict(ref_w[None])[0][0] for m in members], axis=0)
        y_alt = np.mean([m.predict(alt_w[None])[0][0] for m in members], axis=0)
        centre = 20 - 5  # the variant's row: the output is cropped 5 each side
        rows = slice(centre - 3, centre + 4)
        change = y_alt[rows] - y_ref[rows]
        for f, (c, sign) in enumerate(((1, 1), (1, -1), (2, 1), (2, -1))):
            best = (sign * change[:, c]).argmax()
            np.testing.assert_allclose(
                scores[i, f], sign * change[best, c], rtol=1e-5, atol=1e-6
            )
            # the row is the package's, or one that ties with it
            at = int(scores[i, 4 + f]) + 3
            assert abs(change[at, c] - change[best, c]) <= 1e-6
    assert n_scored == res.stats["n_scored"] >= 8
    write_tsv(res, str(files / "out.tsv"))
    header = open(files / "out.tsv").readline().rstrip("\n").split("\t")
    assert header[7:] == [f"{res.output_names[0]}_DS_AG"] + [
        f"{res.output_names[0]}_{f}"
        for f in ("DS_AL", "DS_DG", "DS_DL", "DP_AG", "DP_AL", "DP_DG", "DP_DL")
    ]


def test_max_over_fixed_rows_and_its_errors(files):
    member = _splice_like(3)
    res = score_variants(
        [member],
        files / "variants.vcf",
        files / "genome.fa",
        reduce="max",
        over="10:20",
        tasks=[0, 2],
        length=41,
    )
    ok = np.array(res.status) == "scored"
    change = (res.alternative[0] - res.reference[0])[ok][:, 10:20][..., [0, 2]]
    np.testing.assert_array_equal(res.scores[0][ok][..., 0], change.max(axis=1))
    np.testing.assert_array_equal(res.scores[0][ok][..., 1], change.argmax(axis=1) + 10)
    vcf, fa = files / "variants.vcf", files / "genome.fa"
    with pytest.raises(InputError, match="input length is free: give the window's"):
        score_variants(member, vcf, fa, reduce="spliceai")
    model = ismkernel.load_model(EXAMPLE_MODEL)
    with pytest.raises(InputError, match="length=41 but the model takes windows of"):
        score_variants(model, vcf, fa, length=41)
    with pytest.raises(InputError, match="over 10:50 is out of range for output"):
        score_variants(member, vcf, fa, reduce="max", over="10:50", length=41)
    with pytest.raises(InputError, match="sum_over would sum away"):
        score_variants(member, vcf, fa, reduce="max", sum_over="0:3", length=41)
    with pytest.raises(InputError, match="needs a profile output with a length axis"):
        score_variants(model, vcf, fa, reduce="max")


def test_dask_ensemble_equals_in_process(files, cluster):
    members = [_splice_like(1), _splice_like(2)]
    opts = dict(reduce="spliceai", around=3, length=41, windows_per_batch=2)
    local = score_variants(members, files / "variants.vcf", files / "genome.fa", **opts)
    remote = score_variants(
        members, files / "variants.vcf", files / "genome.fa", client=cluster, **opts
    )
    for a, b in zip(local.scores + local.reference, remote.scores + remote.reference):
        np.testing.assert_array_equal(a, b)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, (5, 41))]
    here = ismkernel.ism(members, x, positions=[3, 20], reduce="max")
    there = ismkernel.ism(members, x, positions=[3, 20], reduce="max", client=cluster)
    assert there.stats["n_members"] == 2
    # other chunks may round the last bit otherwise: values only
    np.testing.assert_allclose(
        there.scores[0][..., 0], here.scores[0][..., 0], rtol=0, atol=1e-6
    )


def test_variants_command_line_with_an_ensemble_and_spliceai_scores(files, capsys):
    from conftest import fixture_path

    from ismkernel.cli import main

    a, b = fixture_path("bpnet_mini.k2.h5"), fixture_path("bpnet_mini.k3.keras")
    out = files / "out.h5"
    args = ["variants", "--model", str(a), "--model", str(b), "--vcf"]
    args += [str(files / "variants.vcf"), "--genome", str(files / "genome.fa")]
    opts = ["--output", "profile", "--reduce", "spliceai", "--tasks", "0,1"]
    assert main([*args, "-o", str(out), *opts, "--around", "6", "-q"]) == 0
    models = [ismkernel.load_model(p) for p in (a, b)]
    api = score_variants(
        models,
        files / "variants.vcf",
        files / "genome.fa",
        outputs="profile",
        reduce="spliceai",
        tasks=[0, 1],
        around=6,
    )
    import h5py

    with h5py.File(out) as f:
        assert f.attrs["model_file"] == "bpnet_mini.k2.h5,bpnet_mini.k3.keras"
        np.testing.assert_array_equal(f["outputs/profile/scores"][:], api.scores[0])
    both = [*args[:1], str(a), *args[1:], "-o", str(out), "--force"]
    assert main(both) == 2
    assert "give the model as MODEL or with --model" in capsys.readouterr().err
