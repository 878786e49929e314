// First-fit with two budgets (tokens and ViT patches) in O(log bins) per sample, exactly.
//
// First-fit decreasing visits samples with non-increasing token counts t. Call a bin "eligible"
// when its tokens left are >= the current t: then the first bin with room for (t, p) is the first
// eligible bin with patches left >= p, one walk down a max segment tree over bins that holds the
// patches left of eligible bins (-1 for the others). Eligibility changes only in two ways:
// - a bin receives a sample: its tokens left drop; if they fall below t it becomes ineligible and
//   waits in the bucket of its tokens left;
// - t drops (the next sample is shorter): the buckets of the levels now reached are emptied, their
//   bins become eligible. A bucket below t never receives a bin after t passed it, since t only
//   decreases, so every bucket is emptied once and each bin sits in at most one bucket.
// Total cost O(n log bins + capacity). A closed bin (at the sample cap) holds -1 for good.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ov_packing {

class FirstFitTwoBudgets {
 public:
  explicit FirstFitTwoBudgets(int32_t capacity)
      : bucket_head_(static_cast<std::size_t>(capacity) + 1, -1), level_(capacity) {
    grow(1024);
  }

  // Lowest-index bin with tokens_left >= tokens and patches_left >= patches, or -1. `tokens` must
  // not increase from one call to the next (decreasing order).
  int64_t find_first(int32_t tokens, int32_t patches) {
    lower_level_to(tokens);
    if (patches_[1] < patches) return -1;
    std::size_t node = 1;
    while (node < leaves_) node = patches_[2 * node] >= patches ? 2 * node : 2 * node + 1;
    return static_cast<int64_t>(node - leaves_);
  }

  // Set bin `bin`'s remaining capacities after it received a sample or was opened; `closed` takes
  // it out for good.
  void set(int64_t bin, int32_t tokens_left, int32_t patches_left, bool closed) {
    const auto b = static_cast<std::size_t>(bin);
    while (b >= leaves_) grow(2 * leaves_);
    if (b >= next_in_bucket_.size()) next_in_bucket_.resize(b + 1, -1);
    if (b >= patches_left_.size()) patches_left_.resize(b + 1, -1);
    patches_left_[b] = patches_left;
    if (closed || tokens_left < 0) {
      update(b, -1);
    } else if (tokens_left >= level_) {
      update(b, patches_left);
    } else {  // too few tokens for the current samples: waits until they get short enough
      update(b, -1);
      const auto level = static_cast<std::size_t>(tokens_left);
      next_in_bucket_[b] = bucket_head_[level];
      bucket_head_[level] = static_cast<int32_t>(b);
    }
  }

 private:
  void lower_level_to(int32_t tokens) {
    while (level_ > tokens) {
      --level_;
      const auto level = static_cast<std::size_t>(level_);
      for (int32_t b = bucket_head_[level]; b >= 0; b = next_in_bucket_[static_cast<std::size_t>(b)]) {
        update(static_cast<std::size_t>(b), patches_left_[static_cast<std::size_t>(b)]);
      }
      bucket_head_[level] = -1;
    }
  }

  void update(std::size_t bin, int32_t value) {
    std::size_t node = leaves_ + bin;
    patches_[node] = value;
    for (node /= 2; node >= 1; node /= 2) {
      patches_[node] = std::max(patches_[2 * node], patches_[2 * node + 1]);
    }
  }

  void grow(std::size_t leaves) {
    std::vector<int32_t> patches(2 * leaves, -1);
    for (std::size_t i = 0; i < leaves_; ++i) patches[leaves + i] = patches_[leaves_ + i];
    for (std::size_t node = leaves - 1; node >= 1; --node) {
      patches[node] = std::max(patches[2 * node], patches[2 * node + 1]);
    }
    patches_.swap(patches);
    leaves_ = leaves;
  }

  std::vector<int32_t> bucket_head_;     // per tokens-left level: first waiting bin, or -1
  std::vector<int32_t> next_in_bucket_;  // per bin: next waiting bin of its level
  std::vector<int32_t> patches_left_;    // per bin
  std::vector<int32_t> patches_;         // segment tree: max patches left of eligible bins
  std::size_t leaves_ = 0;
  int32_t level_;                        // tokens of the current sample (eligibility threshold)
};

}  // namespace ov_packing
