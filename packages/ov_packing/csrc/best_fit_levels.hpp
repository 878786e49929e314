// Open bins grouped by remaining tokens, for best-fit with a second (patch) budget.
//
// Level r holds the open bins with exactly r tokens left, as a max-heap on patches left (ties:
// lower bin id first). A segment tree over levels keeps each level's best patch room, so "the
// fullest level that still has a bin with room for (t, p)" is the leftmost level >= t whose value
// is >= p: O(log capacity), whatever the mix of token-full and patch-full bins.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace ov_packing {

class BestFitLevels {
 public:
  explicit BestFitLevels(int32_t capacity) : capacity_(capacity) {
    leaves_ = 1;
    while (leaves_ < static_cast<std::size_t>(capacity) + 1) leaves_ *= 2;
    best_.assign(2 * leaves_, -1);
    heaps_.resize(static_cast<std::size_t>(capacity) + 1);
  }

  // A bin with the fewest tokens left among those with room for (tokens, patches), removed from
  // its level; -1 if none.
  int32_t take(int32_t tokens, int32_t patches) {
    const int64_t level = leftmost_at_least(static_cast<std::size_t>(tokens), patches);
    if (level < 0) return -1;
    auto& heap = heaps_[static_cast<std::size_t>(level)];
    std::pop_heap(heap.begin(), heap.end());
    const int32_t bin = -heap.back().second;
    heap.pop_back();
    refresh(static_cast<std::size_t>(level));
    return bin;
  }

  void put(int32_t bin, int32_t tokens_left, int32_t patches_left) {
    auto& heap = heaps_[static_cast<std::size_t>(tokens_left)];
    heap.emplace_back(patches_left, -bin);
    std::push_heap(heap.begin(), heap.end());
    refresh(static_cast<std::size_t>(tokens_left));
  }

 private:
  void refresh(std::size_t level) {
    const auto& heap = heaps_[level];
    std::size_t node = leaves_ + level;
    best_[node] = heap.empty() ? -1 : heap.front().first;
    for (node /= 2; node >= 1; node /= 2) best_[node] = std::max(best_[2 * node], best_[2 * node + 1]);
  }

  // Leftmost level >= from whose best patch room is >= patches, or -1.
  int64_t leftmost_at_least(std::size_t from, int32_t patches) const {
    std::size_t node = leaves_ + from;
    if (best_[node] >= patches) return static_cast<int64_t>(from);
    // Climb: whenever node is a left child, its right sibling covers levels just after it.
    while (node > 1) {
      if (node % 2 == 0 && best_[node + 1] >= patches) {
        node += 1;
        while (node < leaves_) node = best_[2 * node] >= patches ? 2 * node : 2 * node + 1;
        return static_cast<int64_t>(node - leaves_);
      }
      node /= 2;
    }
    return -1;
  }

  int32_t capacity_;
  std::size_t leaves_;
  std::vector<int32_t> best_;
  std::vector<std::vector<std::pair<int32_t, int32_t>>> heaps_;
};

}  // namespace ov_packing
