// Segment tree over bins in opening order, keyed by remaining tokens, for first-fit with one
// budget (two budgets: first_fit_two_budgets.hpp).
//
// Each node holds the largest remaining capacity below it, so "the first bin with room for t" is
// one walk from the root: O(log bins). A closed bin (full, or at the sample cap) holds -1 and is
// never chosen again. The tree doubles when it runs out of leaves, so memory follows the number of
// bins actually opened.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ov_packing {

class FirstFitTree {
 public:
  FirstFitTree() { grow(1024); }

  // Lowest-index bin with tokens_left >= tokens, or -1.
  int64_t find_first(int32_t tokens) const {
    if (tokens_[1] < tokens) return -1;
    std::size_t node = 1;
    while (node < leaves_) node = tokens_[2 * node] >= tokens ? 2 * node : 2 * node + 1;
    return static_cast<int64_t>(node - leaves_);
  }

  // Set bin `bin`'s remaining capacity (-1 closes it); opens leaves as needed.
  void set(int64_t bin, int32_t tokens_left) {
    while (static_cast<std::size_t>(bin) >= leaves_) grow(2 * leaves_);
    std::size_t node = leaves_ + static_cast<std::size_t>(bin);
    tokens_[node] = tokens_left;
    for (node /= 2; node >= 1; node /= 2) {
      tokens_[node] = std::max(tokens_[2 * node], tokens_[2 * node + 1]);
    }
  }

 private:
  void grow(std::size_t leaves) {
    std::vector<int32_t> tokens(2 * leaves, -1);
    for (std::size_t i = 0; i < leaves_; ++i) tokens[leaves + i] = tokens_[leaves_ + i];
    for (std::size_t node = leaves - 1; node >= 1; --node) {
      tokens[node] = std::max(tokens[2 * node], tokens[2 * node + 1]);
    }
    tokens_.swap(tokens);
    leaves_ = leaves;
  }

  std::size_t leaves_ = 0;
  std::vector<int32_t> tokens_;
};

}  // namespace ov_packing
