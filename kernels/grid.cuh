// A CTA's (head, batch) on a grid that numbers heads x batch over two of its dims: CUDA caps a
// grid's y and z at 65535, so past that the host folds them (configs.fold_heads_batch): item
// fast + dim(fast) * slow of heads x batch, the head fastest. Unfolded, the fast dim is the
// heads and the slow one the batch, and this gives them back as they are. The items past
// heads x batch (a folded grid's last row) have batch >= the batch count: the kernel returns.
#pragma once

namespace fc {

struct HeadBatch { int head, batch; };

__device__ __forceinline__ HeadBatch fold_head_batch(unsigned fast, unsigned fast_dim, unsigned slow, int heads) {
    const unsigned item = fast + fast_dim * slow;   // < heads x batch + 65535 <= 2^32 (validation)
    const unsigned batch = item / static_cast<unsigned>(heads);
    return {static_cast<int>(item - batch * static_cast<unsigned>(heads)), static_cast<int>(batch)};
}

// A grid layer's blocks, numbered x + X y (the order the hardware starts them in), taken as
// (head item, tile) by groups of `group` head items: within a group the tiles in order and the
// group's items in turn, so the CTAs running at once share a few items' rows in L2 and each
// item's tiles start in ascending order (under a causal mask the longest first; the
// deterministic backward's adds wait on the tiles before). group 1: an item's tiles one after
// the other; 0 or >= X: the grid's own order (items fastest). A last group of fewer items takes
// them in turn as well. The host picks group (flashcore_cupy/configs.py: Sm90BwdConfig.head_group).
struct GridItem { unsigned item, tile; };

__device__ __forceinline__ GridItem grouped_item(unsigned x, unsigned y, unsigned X, unsigned Y, unsigned group) {
    if (group == 0 || group >= X) return {x, y};
    const unsigned n = x + X * y, first = n / (group * Y) * group, in_group = n - first * Y;
    const unsigned items = min(group, X - first);
    const unsigned tile = in_group / items;
    return {first + in_group - tile * items, tile};
}

}  // namespace fc
