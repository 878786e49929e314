// Segment tree over bins in opening order, keyed by remaining capacity, for first-fit.
//
// Each node holds the largest remaining token (and patch) capacity below it, so "the first bin
// with room for (t, p)" is a walk from the root: O(log bins) with one capacity, a pruned
// depth-first search with two (a subtree can hold enough tokens in one bin and enough patches in
// another). A closed bin (full, or at the sample cap) holds -1 and is never chosen again. The tree
// doubles when it runs out of leaves, so memory follows the number of bins actually opened.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ov_packing {

class FirstFitTree {
 public:
  FirstFitTree(bool two_dimensions, int64_t capacity, int64_t patch_capacity)
      : two_dimensions_(two_dimensions), capacity_(capacity), patch_capacity_(patch_capacity) {
    grow(1024);
  }

  // Lowest-index bin with tokens_left >= tokens and patches_left >= patches, or -1. Adds the
  // number of tree nodes examined to `visits` (two budgets only).
  int64_t find_first(int32_t tokens, int32_t patches, uint64_t& visits) const {
    if (tokens_[1] < tokens) return -1;
    if (!two_dimensions_) {
      std::size_t node = 1;
      while (node < leaves_) node = tokens_[2 * node] >= tokens ? 2 * node : 2 * node + 1;
      return static_cast<int64_t>(node - leaves_);
    }
    // Depth-first, left before right, pruning subtrees that cannot hold the sample.
    std::size_t stack[128];
    std::size_t depth = 0;
    stack[depth++] = 1;
    const int64_t balanced = std::min(tokens * patch_capacity_, patches * capacity_);
    while (depth > 0) {
      const std::size_t node = stack[--depth];
      ++visits;
      if (tokens_[node] < tokens || patches_[node] < patches || balanced_[node] < balanced) continue;
      if (node >= leaves_) return static_cast<int64_t>(node - leaves_);
      stack[depth++] = 2 * node + 1;
      stack[depth++] = 2 * node;
    }
    return -1;
  }

  // Set bin `bin`'s remaining capacities (-1 closes it); opens leaves as needed.
  void set(int64_t bin, int32_t tokens_left, int32_t patches_left) {
    while (static_cast<std::size_t>(bin) >= leaves_) grow(2 * leaves_);
    std::size_t node = leaves_ + static_cast<std::size_t>(bin);
    tokens_[node] = tokens_left;
    if (two_dimensions_) {
      patches_[node] = patches_left;
      balanced_[node] = balanced_room(tokens_left, patches_left);
    }
    for (node /= 2; node >= 1; node /= 2) pull(tokens_, patches_, balanced_, node);
  }

 private:
  // Both budgets scaled to a common unit, the smaller one: a bin that fits (t, p) has at least
  // min(t * P, p * C). A subtree whose best such value is lower cannot hold the sample, which
  // prunes the mixed subtrees (token-full bins beside patch-full ones) that the per-budget maxima
  // alone let through.
  int64_t balanced_room(int32_t tokens_left, int32_t patches_left) const {
    if (tokens_left < 0 || patches_left < 0) return -1;
    return std::min(tokens_left * patch_capacity_, patches_left * capacity_);
  }

  void pull(std::vector<int32_t>& tokens, std::vector<int32_t>& patches,
            std::vector<int64_t>& balanced, std::size_t node) const {
    tokens[node] = std::max(tokens[2 * node], tokens[2 * node + 1]);
    if (two_dimensions_) {
      patches[node] = std::max(patches[2 * node], patches[2 * node + 1]);
      balanced[node] = std::max(balanced[2 * node], balanced[2 * node + 1]);
    }
  }

  void grow(std::size_t leaves) {
    const std::size_t size = two_dimensions_ ? 2 * leaves : 0;
    std::vector<int32_t> tokens(2 * leaves, -1);
    std::vector<int32_t> patches(size, -1);
    std::vector<int64_t> balanced(size, -1);
    for (std::size_t i = 0; i < leaves_; ++i) {
      tokens[leaves + i] = tokens_[leaves_ + i];
      if (two_dimensions_) {
        patches[leaves + i] = patches_[leaves_ + i];
        balanced[leaves + i] = balanced_[leaves_ + i];
      }
    }
    for (std::size_t node = leaves - 1; node >= 1; --node) pull(tokens, patches, balanced, node);
    tokens_.swap(tokens);
    patches_.swap(patches);
    balanced_.swap(balanced);
    leaves_ = leaves;
  }

  bool two_dimensions_;
  int64_t capacity_;
  int64_t patch_capacity_;
  std::size_t leaves_ = 0;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> patches_;
  std::vector<int64_t> balanced_;
};

}  // namespace ov_packing
