"""A CPU model of the Hopper kernel's synchronisation (kernels/flash_fwd_sm90.cu): one
CTA's producers (one thread for Q, K and V, or one for Q and K and one for V), their
TMA copies or a gathered slot's lane copies from one or more warps a role (landing in any order) and consumers as coroutines over the same mbarriers (Q full/empty, the K/V
ring, the dynamic deal's item slots) and ping-pong named barriers, run in random interleavings. It checks the protocol, not the kernel: a change to the kernel's
waits, releases or turns belongs here too. It reproduces the deadlock of the first
idle-consumer order (every skipped key tile released before any turn), and the parity
aliasing that split keys would have with a ring not a multiple of the consumers. A second
model below does the same for the backward (kernels/flash_bwd_sm90.cu): its ring, the dQ
reducer, dQ a tile late behind the dS^T buffers' barriers, and the consumers' turns.
"""

import random

import pytest


class Mbarrier:
    def __init__(self, count):
        self.count, self.arrived, self.phases = count, 0, 0

    def arrive(self):
        self.arrived += 1
        if self.arrived == self.count:
            self.arrived, self.phases = 0, self.phases + 1


def cta(consumers, stages, pingpong, items, skip_per_turn=True, split=False, producers=1, dynamic=False,
        copies=1, full_count=None, parts=1, stream=False, q_slots=1, early_release=False,
        late_publish=False):
    """Coroutines of one CTA. items: per work item (n_blocks, per-consumer key tiles)
    where a consumer's count is None when it has no rows in the item. skip_per_turn=False
    is the first version's order for skipped tiles (all released, then the turns).
    split: the consumers share the rows and take every consumers-th key tile each, then
    meet twice at a barrier to merge (one work item per CTA). producers: TMA-issuing threads.
    dynamic: the dynamic deal's item slots (sm90_scheduler.cuh's ItemSlots): the producer
    publishes item n's successor once it has issued item n's copies (slot n % 2, after the
    consumers took the slot's previous item), every consumer takes it when item n ends; the
    last one published is past the items (where the kernel's loops stop). (The slot's empty wait
    is insurance: Q's release already keeps the producer within an item of every consumer.)
    copies: a K/V slot's copies that arrive on its full barrier one by one as they land (a
    gathered paged cache: each lane of a producer warp, cp.async.mbarrier.arrive.noinc),
    parts the warps of each producer role that copy a slot's parts (gathered pages: 4 /
    producers, each waiting on the slot's release itself; Q from part 0), full_count the
    barrier's expected arrivals (default: copies x parts, as the kernel initialises it).
    A consumer past a full wait checks that none of the slot's copies is still in flight.
    stream: streamed work tiles (q_slots=2; the kernel's stream_items): a consumer's turns run as
    one chain across the CTA's tiles, a tile's last P V (where its rows see every key tile) held
    back to go out in the next tile's first turn, with its S_0; a tile whose next one is absent or
    has no key tiles closes the chain as every tile does unstreamed. A P V checks that its V slot
    still holds its tile (not refilled under a held-back P V); early_release=True releases a
    held-back P V's slot when it is held back (a bug the check must catch); late_publish=True
    publishes a streamed dynamic deal's next item after all of an item's copies (the unstreamed
    order)."""
    users = 1 if split else consumers
    q_full, q_empty = [Mbarrier(1) for _ in range(q_slots)], [Mbarrier(consumers) for _ in range(q_slots)]
    full_count = copies * parts if full_count is None else full_count
    k_full, v_full = ([Mbarrier(full_count) for _ in range(stages)] for _ in range(2))
    k_empty = [Mbarrier(users) for _ in range(stages)]
    v_empty = [Mbarrier(users) for _ in range(stages)]
    arrivals, syncs = [0] * consumers, [0] * consumers   # named barrier 1 + c
    combine = [0]                                         # named barrier 1 + consumers
    item_full, item_empty = [Mbarrier(1) for _ in range(2)], [Mbarrier(consumers) for _ in range(2)]

    def wait(bar, phase):
        # mbarrier waits name a phase by its parity only: the barrier must be in that
        # phase or the one after when the wait starts, and not move past it unseen.
        assert bar.phases >= phase, "waits for a phase two ahead (parity aliasing)"
        while bar.phases <= phase:
            yield
        assert bar.phases == phase + 1, "a waiter saw two phases go by (parity aliasing)"
        assert bar not in in_flight, "a slot's wait ended with copies of it still in flight"

    def ring(it):
        return it % stages, it // stages

    k_ahead = consumers - 1 if split else 0   # the kernel's Tile::kKAhead

    def producer(loads_k, loads_v, part):
        def publish(n):   # the dynamic deal's next item (ItemSlots.publish)
            if dynamic and loads_k and part == 0:
                if n >= 2:
                    yield from wait(item_empty[n % 2], (n - 2) // 2)
                item_full[n % 2].arrive()

        it = 0
        for n, (n_blocks, _) in enumerate(items):
            if loads_k and part == 0:
                if n >= q_slots:
                    yield from wait(q_empty[n % q_slots], n // q_slots - 1)
                in_flight.append(q_full[n % q_slots])
            for j in range(n_blocks + k_ahead):   # K_j, then V_{j - k_ahead}
                for loads, t, empty, full in ((loads_k, j, k_empty, k_full),
                                              (loads_v, j - k_ahead, v_empty, v_full)):
                    if loads and 0 <= t < n_blocks:
                        slot, use = ring(it + t)
                        if it + t >= stages:
                            yield from wait(empty[slot], use - 1)
                        in_flight.extend([full[slot]] * copies)
                if stream and not late_publish and j == 0:   # streamed: once the first copies are issued
                    yield from publish(n)
            it += n_blocks
            if not stream or late_publish or n_blocks == 0:   # once the item's copies are issued
                yield from publish(n)

    def consumer(c):
        def await_turn():
            if pingpong:
                syncs[c] += 1
                while arrivals[c] < syncs[c]:
                    yield

        def pass_turn(last):
            if pingpong and not (last and c == consumers - 1):
                nxt = (c + 1) % consumers
                arrivals[nxt] += 1
                assert arrivals[nxt] - syncs[nxt] <= 1, "a named barrier took two arrivals at once"

        def tile(k):
            return c + k * consumers if split else k

        def reads_v(slot, use):   # a P V reads V slot `slot` in its use-th fill
            assert v_full[slot].phases == use + 1, "a V slot refilled before its P V read it"

        pending = None   # streamed: the held-back last P V's V slot and use

        def goes_out():   # a held-back P V has gone out in this turn: its V slot back
            nonlocal pending
            reads_v(*pending)
            if not early_release:
                v_empty[pending[0]].arrive()
            pending = None

        def flush_turn(last):   # a turn with no S of this consumer's (a held-back P V goes out in it)
            held = pending
            if held:
                yield from wait(v_full[held[0]], held[1])
            yield from await_turn()
            pass_turn(last)
            if held:
                goes_out()

        it, chain = 0, False
        for n, (n_blocks, mine) in enumerate(items):
            blocks = mine[c] or 0
            own = len(range(c, blocks, consumers)) if split else blocks
            if dynamic and stream:   # streamed: the next item taken as this one starts (whether it closes)
                yield from wait(item_full[n % 2], n // 2)
                item_empty[n % 2].arrive()
            closes = not stream or n + 1 == len(items) or items[n + 1][0] == 0
            if pingpong and c == consumers - 1 and n_blocks > 0 and not chain:
                pass_turn(False)
            chain = stream and n_blocks > 0 and not closes
            yield from wait(q_full[n % q_slots], n // q_slots)
            if own > 0:                                      # S_0 (with a held-back P V)
                slot, use = ring(it + tile(0))
                yield from wait(k_full[slot], use)
                held = pending
                if held:
                    yield from wait(v_full[held[0]], held[1])
                yield from await_turn()
                pass_turn(False)
                k_empty[slot].arrive()
                if held:
                    goes_out()
            for k in range(1, own):                          # S_k with P_{k-1} V_{k-1}
                slot, use = ring(it + tile(k))
                prev, prev_use = ring(it + tile(k - 1))
                yield from wait(k_full[slot], use)
                yield from wait(v_full[prev], prev_use)
                yield from await_turn()
                reads_v(prev, prev_use)
                pass_turn(False)
                k_empty[slot].arrive()
                v_empty[prev].arrive()
            q_empty[n % q_slots].arrive()
            if not closes and own > 0 and blocks == n_blocks:   # held back for the next turn
                pending = ring(it + tile(own - 1))
                if early_release:
                    v_empty[pending[0]].arrive()
            elif own > 0:                                    # the last P V
                slot, use = ring(it + tile(own - 1))
                yield from wait(v_full[slot], use)
                yield from await_turn()
                reads_v(slot, use)
                pass_turn(closes and blocks == n_blocks)
                v_empty[slot].arrive()
            if split:                                        # merge: two barriers
                for meeting in (1, 2):
                    combine[0] += 1
                    while combine[0] < meeting * consumers:
                        yield
                it += n_blocks
                continue
            if not skip_per_turn:
                for j in range(blocks, n_blocks):
                    slot, use = ring(it + j)
                    yield from wait(k_full[slot], use)
                    yield from wait(v_full[slot], use)
                    k_empty[slot].arrive()
                    v_empty[slot].arrive()
            if not closes:   # streamed: tile t skipped in turn t (turn `blocks` was the last P V's)
                for t in range(blocks, n_blocks):
                    if not (t == blocks and blocks > 0):
                        yield from flush_turn(False)
                    slot, use = ring(it + t)
                    yield from wait(k_full[slot], use)
                    yield from wait(v_full[slot], use)
                    k_empty[slot].arrive()
                    v_empty[slot].arrive()
            for turn in range(blocks + 1 if blocks > 0 else 0, n_blocks + 1 if n_blocks > 0 and closes else 0):
                if turn > 0 and skip_per_turn:               # a tile these rows skip
                    slot, use = ring(it + turn - 1)
                    yield from wait(k_full[slot], use)
                    yield from wait(v_full[slot], use)
                    k_empty[slot].arrive()
                    v_empty[slot].arrive()
                yield from flush_turn(turn == n_blocks)
            it += n_blocks
            if dynamic and not stream:   # take the next item (ItemSlots.take)
                yield from wait(item_full[n % 2], n // 2)
                item_empty[n % 2].arrive()
        assert pending is None, "a held-back P V never went out"

    def tma(rng):   # lands the copies in flight in any order
        while not (in_flight == [] and producing[0] == 0):
            if in_flight:
                in_flight.pop(rng.randrange(len(in_flight))).arrive()
            yield

    roles = [(k, v, part) for part in range(parts)
             for k, v in ([(True, True)] if producers == 1 else [(True, False), (False, True)])]
    in_flight, producing = [], [len(roles)]   # producers still running

    def producer_then_done(loads_k, loads_v, part):
        yield from producer(loads_k, loads_v, part)
        producing[0] -= 1

    def consumer_then_done(c):
        yield from consumer(c)
        consuming[0] -= 1
        if consuming[0] == 0:   # a turn passed that nobody takes would outlive the CTA
            assert arrivals == syncs, "a ping-pong turn left open at the end"

    consuming = [consumers]
    return ([producer_then_done(*role) for role in roles] + [tma(random.Random(len(items)))] +
            [consumer_then_done(c) for c in range(consumers)])


def runs_to_the_end(coroutines, rng, patience=20000):
    alive, idle = list(coroutines), 0
    while alive:
        co = rng.choice(alive)
        try:
            next(co)
            idle += 1
        except StopIteration:
            alive.remove(co)
            idle = 0
        if idle > patience:
            return False
    return True


def random_items(rng, consumers):
    """Work items as the kernel makes them: full tiles, causal tiles (later consumers see
    more keys), tiles whose last consumers have no rows (past Sq, or sub-tiles)."""
    items = []
    for _ in range(rng.randint(1, 4)):
        n_blocks = rng.randint(0, 7)
        with_rows = rng.randint(1, consumers)
        causal = sorted(rng.randint(0, n_blocks) for _ in range(consumers))
        mine = [(causal[c] if rng.random() < 0.5 else n_blocks) if c < with_rows else None
                for c in range(consumers)]
        items.append((n_blocks, mine))
    return items


@pytest.mark.parametrize("consumers, stages, pingpong", [(2, 2, True), (3, 2, True), (2, 3, False), (1, 2, False)])
def test_the_dynamic_deal_never_deadlocks(consumers, stages, pingpong):
    """The dynamic deal (varlen's, and the probe's on dense tiles): one producer thread, whole
    tiles; up to 8 items a CTA so that both slots turn over, in random interleavings."""
    for seed in range(200):
        rng = random.Random(seed)
        items = random_items(rng, consumers) + random_items(rng, consumers)
        assert runs_to_the_end(cta(consumers, stages, pingpong, items, dynamic=True), rng), items


@pytest.mark.parametrize("producers", [1, 2])
@pytest.mark.parametrize("consumers, stages, pingpong",
                         [(1, 2, False), (2, 2, False), (2, 2, True), (3, 2, True), (3, 3, True),
                          (2, 3, True), (3, 2, False)])
def test_no_deadlock_in_any_interleaving(consumers, stages, pingpong, producers):
    for seed in range(100):
        rng = random.Random(seed)
        items = random_items(rng, consumers)
        assert runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers), rng), items


@pytest.mark.parametrize("producers", [1, 2])
@pytest.mark.parametrize("consumers, stages, pingpong",
                         [(2, 2, True), (3, 2, True), (2, 3, True), (3, 3, True), (2, 2, False), (1, 2, False)])
def test_streamed_tiles_never_deadlock(consumers, stages, pingpong, producers):
    """Streamed work tiles (two Q slots; the kernel's stream_items), on the static deal and on the
    dynamic one (its next item published once the item's first copies are issued, taken by a
    streamed consumer as the item starts): up to 8 tiles a CTA, some of no key tiles
    (where the chain closes and opens again), causal ones (a consumer's rows skip the last
    tiles: its last P V in a turn of its own) and ones whose last consumers have no rows, in
    random interleavings: no deadlock, no turn left open, no held-back P V left, and no V slot
    refilled under one."""
    for seed in range(150):
        rng = random.Random(seed)
        items = random_items(rng, consumers) + random_items(rng, consumers)
        for dynamic in (False, True) if producers == 1 else (False,):   # (the dynamic deal: one producer)
            assert runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers, stream=True,
                                       q_slots=2, dynamic=dynamic), rng), (items, dynamic)


def test_a_streamed_deal_published_after_the_copies_deadlocks():
    """Why the dynamic deal publishes a streamed item's successor after its first copies: after
    all of them (the unstreamed order), a consumer that takes it as the item starts waits on
    copies that wait on its own releases of the item's tiles."""
    items = [(6, [2, None]), (4, [4, 4]), (2, [2, 2])]
    assert runs_to_the_end(cta(2, 2, True, items, stream=True, q_slots=2, dynamic=True), random.Random(0))
    assert not runs_to_the_end(cta(2, 2, True, items, stream=True, q_slots=2, dynamic=True, late_publish=True),
                               random.Random(0), patience=2000)


def test_a_held_back_p_v_keeps_its_v_slot():
    """The check that streamed tiles rest on: releasing a held-back P V's V slot when it is held
    back, not once it has gone out, lets the producer refill the slot under it."""
    items = [(3, [3, 3]), (3, [3, 3]), (2, [2, 2])]
    assert runs_to_the_end(cta(2, 2, True, items, stream=True, q_slots=2), random.Random(0))
    with pytest.raises(AssertionError, match="refilled before its P V read it|phases go by"):
        for seed in range(20):
            runs_to_the_end(cta(2, 2, True, items, stream=True, q_slots=2, early_release=True), random.Random(seed))


@pytest.mark.parametrize("producers", [1, 2])
@pytest.mark.parametrize("consumers, stages", [(2, 2), (2, 4), (3, 3), (4, 8)])
def test_split_keys_without_deadlock(consumers, stages, producers):
    for seed in range(100):
        rng = random.Random(seed)
        n_blocks = rng.randint(0, 9)
        items = [(n_blocks, [n_blocks] * consumers)]
        assert runs_to_the_end(cta(consumers, stages, False, items, split=True, producers=producers), rng), items


def test_releasing_skipped_tiles_before_the_turns_deadlocks():
    """The first version: a consumer released every tile its rows skip, then took its
    turns. A tile past the ring's depth loads only after the other consumer used the
    earlier ones, which takes this consumer's turns: it hangs."""
    items = [(5, [5, None])]
    assert runs_to_the_end(cta(2, 2, True, items), random.Random(0))
    assert not runs_to_the_end(cta(2, 2, True, items, skip_per_turn=False), random.Random(0),
                               patience=2000)


@pytest.mark.parametrize("producers", [1, 2])
@pytest.mark.parametrize("consumers, stages, pingpong", [(2, 2, True), (1, 2, False), (2, 3, True)])
def test_gathered_slots_wait_for_every_lane(consumers, stages, pingpong, producers):
    """A gathered paged cache: each of a slot's 32 lane copies arrives on its full barrier as it
    lands, on a barrier that expects 32; with one expected arrival (TMA's count) a consumer
    would read the slot after the first lane's copies, or its phases run ahead of the waits."""
    for seed in range(50):
        rng = random.Random(seed)
        items = random_items(rng, consumers)
        assert runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers, copies=32), rng), items
    items = [(3, [3] * consumers)]
    with pytest.raises(AssertionError, match="still in flight|phases? (go by|two ahead)"):
        runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers, copies=32, full_count=1),
                        random.Random(0))


@pytest.mark.parametrize("producers", [1, 2])
@pytest.mark.parametrize("consumers, stages, pingpong", [(2, 2, True), (2, 4, True), (2, 2, False)])
def test_gathered_slots_wait_for_every_warp_of_the_role(consumers, stages, pingpong, producers):
    """Gathered pages on the producer's four warps (4 / producers parts a role, each waiting on
    the slot's release itself, Q from part 0): a slot's full barrier expects every part's 32
    lanes; expecting one warp's 32, a consumer reads the slot with another part's copies in
    flight (or its phases run ahead of the waits)."""
    parts = 4 // producers
    # (patience counts the steps since a coroutine last ended: 128 landings a slot take many)
    for seed in range(50):
        rng = random.Random(seed)
        items = random_items(rng, consumers)   # persistent CTAs' items, and the KV cache's split tile
        assert runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers, copies=32,
                                   parts=parts), rng, patience=200000), items
        n_blocks = rng.randint(0, 9)
        split = [(n_blocks, [n_blocks] * consumers)]
        assert runs_to_the_end(cta(consumers, stages, False, split, split=True, producers=producers, copies=32,
                                   parts=parts), rng, patience=200000), split
    items = [(3, [3] * consumers)]
    with pytest.raises(AssertionError, match="still in flight|phases? (go by|two ahead)"):
        runs_to_the_end(cta(consumers, stages, pingpong, items, producers=producers, copies=32, parts=parts,
                            full_count=32), random.Random(0))


# The backward (kernels/flash_bwd_sm90.cu, head dims 64 and 128: dQ a tile late, with turns): a
# producer thread fills the ring's slots (Q, dO, LSE, delta of a query tile), the dQ reducer adds
# each consumer's dQ block once stored, and two consumers run every query tile: S^T and dP^T in
# turns, dS^T of tile t into buffer t % 2 (once both consumers' dQ GEMMs of tile t - 2 read it),
# then dQ of tile t - 1 from buffer (t + 1) % 2 (once both consumers' dS^T of tile t - 1 are
# there; at tile 0 a dropped GEMM on buffer 1, whose full barrier is arrived before the loop),
# the slot and that buffer released, and the block of tile t - 1 stored for the reducer.

def bwd_cta(n_tiles, stages, turns=True, lag_arrive=True, skip_last_pass=True):
    """Coroutines of one backward CTA over n_tiles query tiles. lag_arrive=False leaves out the
    arrival on dS^T buffer 1 before the loop; skip_last_pass=False has consumer 1 pass its last
    turn too (nobody takes it)."""
    q_full, q_empty = [Mbarrier(1) for _ in range(stages)], [Mbarrier(2) for _ in range(stages)]
    dq_full, dq_empty = [Mbarrier(1) for _ in range(2)], [Mbarrier(1) for _ in range(2)]
    ds_full, ds_empty = [Mbarrier(2) for _ in range(2)], [Mbarrier(2) for _ in range(2)]
    slot_tile = [None] * stages              # the tile whose rows a slot holds
    ds_written, ds_read = [0] * n_tiles, [0] * n_tiles   # consumers that wrote / read dS^T of a tile
    dq_block = [None, None]                  # the tile whose dQ a consumer's block holds
    arrivals, syncs = [0, 0], [0, 0]         # named barriers 2 + c
    landing = []

    def wait(bar, phase):
        assert bar.phases >= phase, "waits for a phase two ahead (parity aliasing)"
        while bar.phases <= phase:
            yield
        assert bar.phases == phase + 1, "a waiter saw two phases go by (parity aliasing)"

    def producer():
        for t in range(n_tiles):
            slot, use = t % stages, t // stages
            if t >= stages:
                yield from wait(q_empty[slot], use - 1)
            landing.append((slot, t))

    def land():
        while producing[0] or landing:
            if landing:
                slot, t = landing.pop(0)
                slot_tile[slot] = t
                q_full[slot].arrive()
            yield

    def reducer():
        for t in range(n_tiles):
            for c in range(2):
                yield from wait(dq_full[c], t)
                assert dq_block[c] == t, "the reducer read a dQ block of another tile"
            for c in range(2):
                dq_empty[c].arrive()

    def consumer(c):
        def await_turn():
            if turns:
                syncs[c] += 1
                while arrivals[c] < syncs[c]:
                    yield

        def pass_turn(last):
            if turns and not (last and c == 1 and skip_last_pass):
                arrivals[1 - c] += 1
                assert arrivals[1 - c] - syncs[1 - c] <= 1, "a named barrier took two arrivals at once"

        def dq_store(u):
            if u > 0:
                yield from wait(dq_empty[c], u - 1)
            dq_block[c] = u
            dq_full[c].arrive()

        if turns and c == 1 and n_tiles > 0:
            pass_turn(False)
        if lag_arrive:
            ds_full[1].arrive()
        for t in range(n_tiles):
            slot = t % stages
            yield from wait(q_full[slot], t // stages)
            assert slot_tile[slot] == t, "a slot read before its tile's rows landed"
            yield from await_turn()   # S^T and dP^T
            pass_turn(t == n_tiles - 1)
            yield
            if t >= 1:
                yield from wait(ds_empty[t % 2], (t - 1) // 2)
            assert t < 2 or ds_read[t - 2] == 2, "dS^T overwritten before both dQ GEMMs read it"
            ds_written[t] += 1
            ds_full[t % 2].arrive()
            yield from wait(ds_full[(t + 1) % 2], t // 2)
            if t >= 1:   # dQ of tile t - 1 (at tile 0 a dropped GEMM)
                assert ds_written[t - 1] == 2, "dQ read dS^T before both consumers wrote it"
                ds_read[t - 1] += 1
            assert slot_tile[slot] == t, "a slot refilled before its tile's GEMMs were done"
            q_empty[slot].arrive()
            ds_empty[(t + 1) % 2].arrive()
            if t >= 1:
                yield from dq_store(t - 1)
        if n_tiles > 0:   # the last tile's dQ
            u = n_tiles - 1
            yield from wait(ds_full[u % 2], (u + 1) // 2)
            assert ds_written[u] == 2, "dQ read dS^T before both consumers wrote it"
            yield from dq_store(u)
        consuming[0] -= 1
        if consuming[0] == 0:
            assert arrivals == syncs, "a turn left open at the end"

    def producer_then_done():
        yield from producer()
        producing[0] -= 1

    producing, consuming = [1], [2]
    return [producer_then_done(), land(), reducer(), consumer(0), consumer(1)]


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("turns", [True, False])
def test_backward_lag_and_turns_run_to_the_end(stages, turns):
    """Every query-tile count (0 included: a key tile no row sees) in random interleavings: no
    deadlock, no slot, dS^T buffer or dQ block reused early, no turn left open."""
    for seed in range(150):
        rng = random.Random(seed)
        n_tiles = rng.choice([0, 1, 2, 3, 4, 7])
        assert runs_to_the_end(bwd_cta(n_tiles, stages, turns), rng), n_tiles


def test_backward_protocol_model_catches_its_mistakes():
    """Without buffer 1's arrival before the loop tile 0's dropped dQ GEMM waits forever; with
    consumer 1 passing its last turn, a turn outlives the CTA."""
    assert not runs_to_the_end(bwd_cta(3, 2, lag_arrive=False), random.Random(0), patience=2000)
    with pytest.raises(AssertionError, match="turn left open"):
        runs_to_the_end(bwd_cta(3, 2, skip_last_pass=False), random.Random(0))


# The deterministic backward across CTAs (flash_bwd_sm90.cu's dQ reducer): each key tile's CTA
# visits the query tiles that see its keys, in order, and adds into each once the tile's count
# reaches its turn; the GPU runs `resident` CTAs at once, launched in grid order (grid.cuh's
# grouped_item, key tiles last first under keys_descending). A CTA waiting on a CTA not yet
# launched holds its SM: if every resident CTA waits so, the grid hangs.

def grouped_order(heads, key_tiles, group):
    """(head, key tile) of the blocks in launch order: grid.cuh's grouped_item over x (heads,
    fastest) and y (key tiles)."""
    order = []
    for n in range(heads * key_tiles):
        x, y = n % heads, n // heads
        if group == 0 or group >= heads:
            order.append((x, y))
            continue
        first = n // (group * key_tiles) * group
        in_group = n - first * key_tiles
        items = min(group, heads - first)
        tile = in_group // items
        order.append((first + in_group - tile * items, tile))
    return order


def deterministic_grid_runs(seqlen_q, seqlen_k, block_m, block_n, heads, group, resident, launch_descending,
                            adds_descending, rng):
    key_tiles, diag = -(-seqlen_k // block_n), seqlen_k - seqlen_q

    def last(q):   # the last key tile that sees query tile q (causal, bottom-right)
        return min(key_tiles - 1, (min((q + 1) * block_m, seqlen_q) - 1 + diag) // block_n)

    def visits(j):   # the query tiles key tile j's rows see, in order
        return [q for q in range(-(-seqlen_q // block_m)) if (min((q + 1) * block_m, seqlen_q) - 1 + diag) >= j * block_n]

    order = [(h, key_tiles - 1 - t if launch_descending else t) for h, t in grouped_order(heads, key_tiles, group)]
    count = {}
    pending, running = list(order), []
    while pending or running:
        while pending and len(running) < resident:
            h, j = pending.pop(0)
            running.append([h, j, visits(j)])
        ready = [cta for cta in running if not cta[2] or
                 count.get((cta[0], cta[2][0]), 0) == (last(cta[2][0]) - cta[1] if adds_descending else cta[1])]
        if not ready:
            return False   # every resident CTA waits on one not launched: a hang
        cta = rng.choice(ready)
        if cta[2]:
            q = cta[2].pop(0)
            count[(cta[0], q)] = count.get((cta[0], q), 0) + 1
        else:
            running.remove(cta)
    assert all(n == last(q) + 1 for (_, q), n in count.items()), "a query tile missed some key tile's adds"
    return True


@pytest.mark.parametrize("descending", [False, True])
def test_the_deterministic_order_never_hangs_the_grid(descending):
    """Key tiles launched and added in the same order (ascending, or descending under a causal
    mask) finish on any residency, grouping and shape, Sq != Sk included."""
    rng = random.Random(0)
    for _ in range(60):
        sq, sk = rng.choice([(1000, 1000), (4096, 4096), (777, 1500), (1500, 700), (16384, 16384)])
        block_m = rng.choice([64, 128])
        assert deterministic_grid_runs(sq, sk, block_m, 128, rng.randint(1, 5), rng.choice([0, 1, 2, 3]),
                                       rng.choice([1, 4, 13, 132]), descending, descending, rng)


def test_descending_adds_need_descending_launches():
    """Adds descending on the grid's ascending order: the resident CTAs (key tiles 0..) all wait on
    key tiles not yet launched, and a long causal grid hangs (16 heads, key tiles slowest: the 132
    resident CTAs are key tiles 0-8 of every head; one head's 128 key tiles all resident would not)."""
    assert not deterministic_grid_runs(16384, 16384, 64, 128, 16, 0, 132, False, True, random.Random(0))
    assert deterministic_grid_runs(16384, 16384, 64, 128, 16, 0, 132, True, True, random.Random(0))
