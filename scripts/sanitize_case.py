"""One causal and one non-causal call per kernel family and Hopper tile kind (head dims 64, 96,
128 and 256, and V of its own 128 beside D192), the Hopper kernel's streamed tiles (several a
CTA), a decode step
(one query, three query heads per kv head: the Hopper kernel packs them into one tile), and
variant calls (a window with every score option, the bias broadcast and ragged) on each
kernel, backward calls, a merge_states, a varlen prefill on each kernel and a paged decode, small enough for compute-sanitizer; exits 1 on a wrong result.

  python3 scripts/sanitize_case.py [SECTION ...]   (dense variants backward merge varlen paged
                                                    contiguous; default: all)
"""

import itertools
import sys

import cupy
import numpy as np

import flashcore_cupy as fc
from flashcore_cupy import api, configs, reference, workload

rng = np.random.default_rng()
# sm90 forces the Hopper kernel's large tiles; auto takes its split-keys tiles here: 32-row
# ones of 8-row warps, and 64-row ones for the decode step
backends = ["sm80"] + (["sm90", "auto"] if api.device_info(0).arch == configs.SM90_ARCH else [])


def checked(label, out, ref) -> bool:
    """Prints out's error against ref; whether it is within fp16's tolerance (whole and worst row)."""
    err, row = reference.rel_error(out, ref), reference.row_rel_error(out, ref)
    print(f"{label}: rel err {err:.2e}, worst row {row:.2e}")
    return workload.within_tolerance("fp16", err, row)


def dense():
    ok = True
    for backend in backends:
        for causal, (sq, sk) in ((False, (200, 333)), (True, (333, 200)), (True, (1, 333))):
            for d, dv in ((64, 64), (128, 128), (96, 96), (256, 256), (192, 128)):
                q = cupy.asarray(rng.standard_normal((2, 3, sq, d)).astype(np.float16))
                k = cupy.asarray(rng.standard_normal((2, 1, sk, d)).astype(np.float16))
                v = cupy.asarray(rng.standard_normal((2, 1, sk, dv)).astype(np.float16))
                out, lse = fc.attention(q, k, v, causal=causal, return_lse=True, backend=backend)
                cupy.cuda.get_current_stream().synchronize()
                ok &= checked(f"{backend} causal={causal} D={d} Dv={dv} {sq}x{sk}", out,
                              reference.attention(q, k, v, causal=causal))
    if "sm90" in backends:
        # Streamed work tiles: more tiles than SMs, so each persistent CTA chains two or three (a
        # tile's last P V held back to go out with the next tile's first S, Q' in the second slot):
        # D64's three consumers, D128's two, and D128 under a window
        heads = api.device_info(0).num_sms + 5
        for d, opts in ((64, {}), (128, {}), (128, dict(window=(100, 20)))):
            q = cupy.asarray(rng.standard_normal((1, heads, 300, d)).astype(np.float16))
            k, v = (cupy.asarray(rng.standard_normal((1, heads, 333, d)).astype(np.float16)) for _ in range(2))
            out = fc.attention(q, k, v, backend="sm90", **opts)
            cupy.cuda.get_current_stream().synchronize()
            ok &= checked(f"sm90 streamed D={d} {opts} {heads} heads 300x333", out, reference.attention(q, k, v, **opts))
    return ok


def variants():
    ok = True
    # Variants, every option on: the portable kernel's, dispatch's, and on sm_90a the Hopper
    # kernel's large and split tiles through a plan with their config. A bias of even rows (a
    # key pair per load), one of odd rows (a key per load), and two whose rows start 16-byte
    # aligned (16-byte copies: whole tiles unfilled, the last key tile and rows zero-filled). The
    # window's right side 3, then 0 (the Hopper kernel's key-linear ALiBi scores).
    hopper = ["large", "small"] if api.device_info(0).arch == configs.SM90_ARCH else []
    for kernel in ["sm80", "auto"] + hopper:
        for bias_dtype, (sq, sk), right in ((np.float16, (200, 334), 3), (np.float32, (333, 201), 0),
                                            (np.float16, (200, 336), 0), (np.float32, (130, 264), 3)):
            q = cupy.asarray(rng.standard_normal((2, 3, sq, 64)).astype(np.float16))
            k, v = (cupy.asarray(rng.standard_normal((2, 1, sk, 64)).astype(np.float16)) for _ in range(2))
            arrays = dict(alibi_slopes=cupy.asarray(rng.uniform(0, 0.3, (2, 3)).astype(np.float32)),
                          bias=cupy.asarray(rng.standard_normal((1, 3, sq, sk)).astype(bias_dtype)))
            opts = dict(causal="top_left", window=(40, right), softcap=4.0)
            config = configs.sm90_config("fp16", 64, kernel) if kernel in hopper else None
            backend = kernel if kernel in ("sm80", "auto") else "auto"
            out = fc.plan(q, k, v, config=config, backend=backend, **opts, **arrays).run(q, k, v, **arrays)
            cupy.cuda.get_current_stream().synchronize()
            ok &= checked(f"variant ({kernel}) bias {np.dtype(bias_dtype)} {sq}x{sk} window (40, {right})", out,
                          reference.attention(q, k, v, **opts, **arrays))
    return ok


def backward():
    ok = True
    # The backward: GQA, causal (dispatch's kernel: Hopper's on sm_90a), deterministic, each
    # Hopper head-dim path (D64 and D128: dQ a tile late and turns; D64 and D96: rows read early;
    # D256: split columns), and a variant with every option (the portable kernel at D64,
    # Hopper's at D128 and D256).
    for opts, det, d in ((dict(causal=True), False, 64), (dict(causal=True), True, 64),
                         (dict(causal=True), False, 128), (dict(), False, 96),
                         (dict(causal="top_left", window=(40, 3), softcap=4.0), False, 64),
                         (dict(causal="top_left", window=(40, 3), softcap=4.0), False, 128),
                         (dict(causal=True), False, 256),
                         (dict(causal="top_left", window=(40, 3), softcap=4.0), False, 256)):
        if d >= 128 and "softcap" in opts:   # every score option: ALiBi and a bias too
            opts = dict(opts, alibi_slopes=cupy.asarray(rng.uniform(0, 0.3, (2, 4)).astype(np.float32)),
                        bias=cupy.asarray(rng.standard_normal((1, 4, 300, 201)).astype(np.float16)))
        # 300 query rows: 3 query tiles of 128 at D64 (5 of 64 at D128), so the Hopper kernel's ring
        # of 2 slots is reused
        q = cupy.asarray(rng.standard_normal((2, 4, 300, d)).astype(np.float16))
        k, v = (cupy.asarray(rng.standard_normal((2, 2, 201, d)).astype(np.float16)) for _ in range(2))
        dout = cupy.asarray(rng.standard_normal(q.shape).astype(np.float16))
        out, lse = fc.attention(q, k, v, return_lse=True, **opts)
        grads = fc.attention_backward(dout, q, k, v, out, lse, deterministic=det, **opts)
        cupy.cuda.get_current_stream().synchronize()
        refs = reference.attention_backward(dout, q, k, v, out, lse, **opts)
        errs = [reference.rel_error(g, r) for g, r in zip(grads, refs)]
        print(f"backward D{d} {sorted(opts)} deterministic={det}: rel err dq {errs[0]:.2e}, dk {errs[1]:.2e}, dv {errs[2]:.2e}")
        ok &= max(errs) <= 5e-3
    return ok


def merge():
    ok = True
    # merge_states: three fp32 partials, one row's middle partial -inf (not read)
    outs = cupy.asarray(rng.standard_normal((3, 2, 5, 7, 96)).astype(np.float32))
    lses = cupy.asarray(rng.standard_normal((3, 2, 5, 7)).astype(np.float32))
    lses[1, 0, 0, 0] = -np.inf
    merged, merged_lse = fc.merge_states(outs, lses, out=cupy.empty((2, 5, 7, 96), np.float16))
    cupy.cuda.get_current_stream().synchronize()
    ref, ref_lse = reference.merge_states(outs.get(), lses.get())
    err = reference.rel_error(merged, ref)
    print(f"merge_states 3 splits: rel err {err:.2e}")
    ok &= err <= 2e-3 and bool(np.allclose(merged_lse.get(), ref_lse, rtol=1e-5, atol=1e-5))
    return ok


def varlen():
    ok = True
    # A varlen prefill (ragged, an empty sequence, GQA, causal) and a paged decode step with an
    # append, split-KV (page size 3: gathered rows), one page index outside the pool (read as zeros)
    cu = cupy.asarray(np.array([0, 70, 70, 201], np.int32))
    q = cupy.asarray(rng.standard_normal((201, 4, 64)).astype(np.float16))
    k, v = (cupy.asarray(rng.standard_normal((201, 2, 64)).astype(np.float16)) for _ in range(2))
    slopes = cupy.asarray(rng.uniform(0.01, 0.3, (3, 4)).astype(np.float32))
    for backend, opts in itertools.product(("sm80", "auto"), (dict(), dict(window=(50, 0), softcap=4.0,
                                                                             alibi_slopes=slopes))):
        # the portable kernel, and on an H100/H200 the Hopper one; plain causal and every option
        out = fc.attention_varlen(q, k, v, cu, cu, max_seqlen_q=131, max_seqlen_k=131, causal=True, backend=backend,
                                  **opts)
        cupy.cuda.get_current_stream().synchronize()
        err = reference.rel_error(out, reference.attention_varlen(q, k, v, cu, cu, causal=True, **opts))
        print(f"varlen prefill ({backend}) {sorted(opts)}: rel err {err:.2e}")
        ok &= err <= 2e-3
    return ok


def paged():
    ok = True
    for page in (3, 64):   # rows gathered, and a key tile a page
        per_seq = -(-120 // page)
        table = rng.permutation(3 * per_seq)[:2 * per_seq].reshape(2, per_seq).astype(np.int32)
        k_pages, v_pages = (rng.standard_normal((3 * per_seq, page, 2, 128)).astype(np.float16) for _ in range(2))
        q = rng.standard_normal((2, 1, 8, 128)).astype(np.float16)
        k_new, v_new = (rng.standard_normal((2, 1, 2, 128)).astype(np.float16) for _ in range(2))
        seqlens = np.array([50, 118], np.int32)
        dev = [cupy.asarray(a) for a in (q, k_pages, v_pages, seqlens, table, k_new, v_new)]
        out = fc.attention_kvcache(dev[0], dev[1], dev[2], cache_seqlens=dev[3], block_table=dev[4], k_new=dev[5],
                                   v_new=dev[6], causal=True, num_splits=3)
        cupy.cuda.get_current_stream().synchronize()
        want = reference.attention_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens, block_table=table, k_new=k_new,
                                           v_new=v_new, causal=True)
        err = reference.rel_error(out, want)
        print(f"paged decode, page {page} (append, 3 splits): rel err {err:.2e}")
        ok &= err <= 2e-3
        dev[4][0, 0] = 100_000   # outside the pool: read as zeros, nothing written there
        fc.attention_kvcache(dev[0], dev[1], dev[2], cache_seqlens=dev[3], block_table=dev[4], k_new=dev[5],
                             v_new=dev[6], num_splits=3)
        cupy.cuda.get_current_stream().synchronize()
    return ok


def contiguous():
    ok = True
    # A decode step over a contiguous cache (the Hopper kernel on sm_90: whole key tiles of the
    # sequences' room, the rows past each sequence zeroed in shared memory), split.
    caches = [rng.standard_normal((2, 300, 2, 128)).astype(np.float16) for _ in range(2)]
    q = rng.standard_normal((2, 1, 8, 128)).astype(np.float16)
    seqlens = np.array([300, 131], np.int32)
    dev = [cupy.asarray(a) for a in (q, *caches, seqlens)]
    out = fc.attention_kvcache(dev[0], dev[1], dev[2], cache_seqlens=dev[3], num_splits=2)
    cupy.cuda.get_current_stream().synchronize()
    err = reference.rel_error(out, reference.attention_kvcache(q, *caches, cache_seqlens=seqlens))
    print(f"contiguous decode (2 splits): rel err {err:.2e}")
    ok &= err <= 2e-3
    return ok


SECTIONS = dict(dense=dense, variants=variants, backward=backward, merge=merge, varlen=varlen, paged=paged,
                contiguous=contiguous)
if __name__ == "__main__":   # sections named on the command line (default: all)
    names = sys.argv[1:] or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        sys.exit(f"unknown sections {unknown}; known: {sorted(SECTIONS)}")
    ok = all([SECTIONS[n]() for n in names])
    sys.exit(0 if ok else 1)
