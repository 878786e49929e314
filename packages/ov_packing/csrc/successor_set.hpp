// A set of integers in [0, universe) with O(log64 universe) insert, erase and successor queries.
//
// Best-fit needs "the smallest remaining capacity >= length that some open bin has". With the
// remaining capacities as members of this set, that is one `next_at_or_after(length)` call: a walk
// over at most four 64-bit words per level (universe <= 2^24 => 4 levels).
#pragma once

#include <cstdint>
#include <vector>

namespace ov_packing {

class SuccessorSet {
 public:
  explicit SuccessorSet(uint64_t universe) : universe_(universe) {
    uint64_t size = universe;
    do {
      size = (size + 63) / 64;
      levels_.emplace_back(size, 0);
    } while (size > 1);
  }

  void insert(uint64_t x) {
    for (auto& level : levels_) {
      const uint64_t bit = uint64_t{1} << (x & 63);
      const bool was_empty = level[x >> 6] == 0;
      level[x >> 6] |= bit;
      if (!was_empty) return;
      x >>= 6;
    }
  }

  void erase(uint64_t x) {
    for (auto& level : levels_) {
      level[x >> 6] &= ~(uint64_t{1} << (x & 63));
      if (level[x >> 6] != 0) return;
      x >>= 6;
    }
  }

  // Smallest member >= x, or `universe` when there is none.
  uint64_t next_at_or_after(uint64_t x) const {
    if (x >= universe_) return universe_;
    std::size_t depth = 0;
    // Climb until a word holds a member at or after x's position on that level.
    while (true) {
      const auto& level = levels_[depth];
      const uint64_t word_index = x >> 6;
      if (word_index < level.size()) {
        const uint64_t masked = level[word_index] & (~uint64_t{0} << (x & 63));
        if (masked != 0) {
          x = (word_index << 6) | static_cast<uint64_t>(__builtin_ctzll(masked));
          break;
        }
      }
      if (depth + 1 == levels_.size()) return universe_;
      x = word_index + 1;  // one level up, bit i stands for word i of this level
      ++depth;
    }
    // Descend: take the lowest member under the found position on each lower level.
    while (depth > 0) {
      --depth;
      x = (x << 6) | static_cast<uint64_t>(__builtin_ctzll(levels_[depth][x]));
    }
    return x;
  }

 private:
  uint64_t universe_;
  std::vector<std::vector<uint64_t>> levels_;
};

}  // namespace ov_packing
