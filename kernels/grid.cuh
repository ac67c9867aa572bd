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

}  // namespace fc
