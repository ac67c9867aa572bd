"""The ring attention schedule on the CPU (issue 27): zigzag sharding, the blocks each rank
computes, each block's call, and the whole ring simulated on N virtual ranks
(flashcore_cupy.distributed.simulate: the GPU ring's per-rank code on the float64 reference)
against the reference on the whole sequence, forward and backward."""

import numpy as np
import pytest

from flashcore_cupy import reference
from flashcore_cupy.distributed import block_kind, chunk_spans, rank_blocks, ring_source, shard, unshard
from flashcore_cupy.distributed.schedule import BlockCall, block_call
from flashcore_cupy.distributed.simulate import ring_backward, ring_forward, visible

WORLDS = (1, 2, 3, 4, 8)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("zigzag", (False, True))
def test_shards_cover_the_sequence_once_and_unshard_back(world, zigzag):
    seqlen = 2 * world * 5
    spans = [s for r in range(world) for s in chunk_spans(r, world, seqlen, zigzag)]
    covered = sorted(p for start, n in spans for p in range(start, start + n))
    assert covered == list(range(seqlen))
    if zigzag:
        assert chunk_spans(0, world, seqlen, True) == ((0, 5), ((2 * world - 1) * 5, 5))
    x = np.arange(3 * seqlen * 2).reshape(3, seqlen, 2)
    shards = [shard(x, r, world, axis=1, zigzag=zigzag) for r in range(world)]
    assert all(s.shape == (3, seqlen // world, 2) for s in shards)
    np.testing.assert_array_equal(unshard(shards, world, axis=1, zigzag=zigzag), x)


def test_lengths_that_do_not_divide_raise():
    with pytest.raises(ValueError, match="multiple of 8"):
        chunk_spans(0, 4, 30, zigzag=True)
    with pytest.raises(ValueError, match="rank"):
        chunk_spans(4, 4, 32, zigzag=False)


def test_the_ring_brings_every_shard_to_every_rank_once():
    for world in WORLDS:
        for r in range(world):
            assert sorted(ring_source(r, s, world) for s in range(world)) == list(range(world))
            assert ring_source(r, 0, world) == r


def test_block_kinds_against_the_mask():
    """A block is skipped iff no pair in it is visible, full iff every pair is: checked against
    the masks in global positions for spans around the diagonal and windows."""
    spans = [(0, 4), (4, 4), (8, 4), (12, 4), (3, 5)]
    for causal in (False, True):
        for window in (None, (0, 0), (2, 0), (5, 3), (-1, 2), (6, -1)):
            for q_span in spans:
                for k_span in spans:
                    keep = visible(q_span, k_span, causal, window)
                    want = "skip" if not keep.any() else "full" if keep.all() else "masked"
                    assert block_kind(q_span, k_span, causal, window) == want, (causal, window, q_span, k_span)


def test_block_calls_mask_what_the_block_masks():
    """block_call's call (leading rows and keys, causal flag, window aligned bottom-right), as the
    reference masks it and padded with invisible pairs, is the block's mask in global positions,
    for random spans and masks; its options are ones attention accepts; full blocks run
    unmasked, the causal diagonal as causal=True; some calls drop rows or keys."""
    from flashcore_cupy.validation import check_window

    rng = np.random.default_rng(11)
    trimmed = 0
    for _ in range(4000):
        (qs, ks), (n, m) = rng.integers(0, 40, 2), rng.integers(1, 12, 2)
        causal = bool(rng.integers(2))
        window = None if rng.random() < 0.2 else tuple(int(x) for x in rng.integers(-1, 15, 2))
        kind = block_kind((qs, n), (ks, m), causal, window)
        if kind == "skip":
            with pytest.raises(ValueError, match="no visible pair"):
                block_call((qs, n), (ks, m), causal, window)
            continue
        call = block_call((qs, n), (ks, m), causal, window)
        assert 1 <= call.rows <= n and 1 <= call.keys <= m, call
        if call.window is not None:
            check_window(call.window)
        got = np.zeros((n, m), bool)
        got[:call.rows, :call.keys] = reference.visible(np.arange(call.rows), call.rows, call.keys, **call.options())
        np.testing.assert_array_equal(got, visible((qs, n), (ks, m), causal, window),
                                      err_msg=str((qs, n, ks, m, causal, window, call)))
        if kind == "full":
            assert call == BlockCall(n, m, False, None)
        trimmed += (call.rows, call.keys) != (n, m)
    assert block_call((8, 4), (8, 4), True, None) == BlockCall(4, 4, True, None)
    assert trimmed > 100


@pytest.mark.parametrize("world", WORLDS[1:])
def test_zigzag_balances_causal_work_and_masks_only_the_diagonal(world):
    """Under a causal mask with zigzag shards every rank sees the same number of (query, key)
    pairs; blocks above the diagonal are skipped and only the diagonal ones are masked."""
    seqlen = 2 * world * 4
    work = []
    for r in range(world):
        blocks = rank_blocks(r, world, seqlen, causal=True)
        assert all((b.kind == "masked") == (b.q_span == b.k_span) for b in blocks)
        work.append(sum(int(visible(b.q_span, b.k_span, True, None).sum()) for b in blocks))
    assert len(set(work)) == 1 and sum(work) == seqlen * (seqlen + 1) // 2


def _inputs(rng, seqlen, hq=4, hkv=2, d=16, b=2):
    q = rng.standard_normal((b, seqlen, hq, d))
    k = rng.standard_normal((b, seqlen, hkv, d))
    v = rng.standard_normal((b, seqlen, hkv, d))
    return q, k, v


CASES = [(False, None), (True, None), (True, (5, 0)), (False, (3, 2))]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("causal, window", CASES)
def test_ring_forward_and_backward_equal_the_whole_sequence(world, causal, window):
    """The ring on `world` virtual ranks (zigzag when causal), GQA, a window or not: out, LSE and
    dq, dk, dv equal the reference on the whole sequence, in both layouts (each rank's work the
    GPU ring's own code, rank.py, on the reference)."""
    rng = np.random.default_rng(world * 100 + len(CASES))
    seqlen = 2 * world * 3
    q, k, v = _inputs(rng, seqlen)
    dout = rng.standard_normal(q.shape)
    want, want_lse = reference.attention(q, k, v, causal=causal, window=window, layout="bshd", return_lse=True)
    wants = reference.attention_backward(dout, q, k, v, want, want_lse, causal=causal, window=window, layout="bshd")
    for layout in ("bshd", "bhsd"):
        turn = (lambda x: x) if layout == "bshd" else (lambda x: x.transpose(0, 2, 1, 3))
        opts = dict(causal=causal, window=window, layout=layout)
        out, lse = ring_forward(turn(q), turn(k), turn(v), world, **opts)
        np.testing.assert_allclose(turn(out), want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-12)
        grads = ring_backward(turn(dout), turn(q), turn(k), turn(v), out, lse, world, **opts)
        for name, g, w in zip(("dq", "dk", "dv"), grads, wants):
            np.testing.assert_allclose(turn(g), w, rtol=1e-9, atol=1e-11, err_msg=f"{name} {layout}")


def test_contiguous_shards_under_a_causal_mask_also_equal_the_reference():
    rng = np.random.default_rng(7)
    q, k, v = _inputs(rng, 24)
    out, lse = ring_forward(q, k, v, 3, causal=True, zigzag=False)
    np.testing.assert_allclose(out, reference.attention(q, k, v, causal=True, layout="bshd"), rtol=1e-10, atol=1e-12)


def test_the_launcher_starts_a_process_per_rank(tmp_path):
    """Each process sees its RANK, WORLD_SIZE and the rendezvous address; a failing rank's
    status is the launcher's."""
    import os
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    script = tmp_path / "show.py"
    script.write_text(
        "import os, sys\n"
        "from flashcore_cupy.distributed.launch import rank_from_env\n"
        "rank, world = rank_from_env()\n"
        "open(sys.argv[1] + f'/rank{rank}', 'w').write(f\"{world} {os.environ['CUPYX_DISTRIBUTED_PORT']} {sys.argv[2]}\")\n"
        "sys.exit(3 if sys.argv[2] == 'fail' and rank == 1 else 0)\n")
    run = lambda *extra: subprocess.run([sys.executable, "-m", "flashcore_cupy.distributed.launch", "--nproc", "3",  # noqa: E731
                                         str(script), str(tmp_path), *extra], capture_output=True, text=True,
                                        env=env)
    assert run("ok").returncode == 0
    seen = sorted((tmp_path / f"rank{r}").read_text().split() for r in range(3))
    assert all(s[0] == "3" and s[2] == "ok" for s in seen) and len({s[1] for s in seen}) == 1
    assert run("fail").returncode == 3


def test_rank_from_env_explains_a_missing_launcher(monkeypatch):
    from flashcore_cupy.distributed.launch import rank_from_env

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="distributed.launch"):
        rank_from_env()
