// Packing = reject what can never fit, sort the rest by decreasing size, then run two classic
// decreasing heuristics (first-fit and best-fit) and keep the one with fewer bins (ties: first-fit).
// Both are sequential and deterministic; with threads >= 2 they run at the same time, which is why
// the thread count cannot change the result. The winner's bins are listed in a seeded order.
#include "packing.hpp"

#include <algorithm>
#include <exception>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "best_fit_levels.hpp"
#include "first_fit_tree.hpp"
#include "first_fit_two_budgets.hpp"
#include "successor_set.hpp"

namespace ov_packing {
namespace {

// Best-fit keeps a list (one budget) or a heap (two budgets) per remaining capacity; above these
// capacities its tables would cost too much memory and only first-fit runs.
constexpr int64_t kBestFitMaxCapacity = int64_t{1} << 24;
constexpr int64_t kBestFitMaxCapacityTwoBudgets = int64_t{1} << 20;

struct Items {
  std::vector<int32_t> order;  // accepted input indices, largest first
  const int32_t* tokens;
  const int32_t* patches;  // null in one-dimensional packing
};

struct Assignment {
  std::vector<int32_t> bin_of;  // bin of order[k]
  int64_t num_bins = 0;
  std::string algorithm;
};

// Stable counting sort of `indices` by key(index), largest key first.
template <typename Key>
void sort_descending(std::vector<int32_t>& indices, Key key, int64_t max_key) {
  if (max_key > kBestFitMaxCapacity) {
    std::stable_sort(indices.begin(), indices.end(),
                     [&](int32_t a, int32_t b) { return key(a) > key(b); });
    return;
  }
  std::vector<int64_t> start(static_cast<std::size_t>(max_key) + 2, 0);
  for (int32_t index : indices) ++start[static_cast<std::size_t>(max_key - key(index)) + 1];
  std::partial_sum(start.begin(), start.end(), start.begin());
  std::vector<int32_t> sorted(indices.size());
  for (int32_t index : indices) {
    sorted[static_cast<std::size_t>(start[static_cast<std::size_t>(max_key - key(index))]++)] = index;
  }
  indices.swap(sorted);
}

// One budget: a segment tree over bins, O(log bins) per sample. Two budgets: the eligible-bins
// tree of first_fit_two_budgets.hpp, also O(log bins) per sample. Both are exact first-fit, so the
// winner is never worse than first-fit decreasing.
Assignment first_fit_decreasing(const Items& items, const PackRequest& request) {
  const bool two_dimensions = items.patches != nullptr;
  const auto capacity = static_cast<int32_t>(request.capacity);
  const auto patch_capacity = static_cast<int32_t>(request.patch_capacity);
  FirstFitTree tree;
  FirstFitTwoBudgets two_budget_tree(capacity);
  std::vector<int32_t> tokens_left, patches_left, counts;
  Assignment result{std::vector<int32_t>(items.order.size()), 0, "first-fit-decreasing"};
  for (std::size_t k = 0; k < items.order.size(); ++k) {
    const int32_t index = items.order[k];
    const int32_t tokens = items.tokens[index];
    const int32_t patches = two_dimensions ? items.patches[index] : 0;
    int64_t bin = two_dimensions ? two_budget_tree.find_first(tokens, patches) : tree.find_first(tokens);
    if (bin < 0) {
      bin = static_cast<int64_t>(tokens_left.size());
      tokens_left.push_back(capacity);
      patches_left.push_back(patch_capacity);
      counts.push_back(0);
    }
    const auto b = static_cast<std::size_t>(bin);
    tokens_left[b] -= tokens;
    patches_left[b] -= patches;
    ++counts[b];
    const bool closed = request.max_per_bin > 0 && counts[b] >= request.max_per_bin;
    if (two_dimensions) {
      two_budget_tree.set(bin, tokens_left[b], patches_left[b], closed);
    } else {
      tree.set(bin, closed ? -1 : tokens_left[b]);
    }
    result.bin_of[k] = static_cast<int32_t>(bin);
  }
  result.num_bins = static_cast<int64_t>(tokens_left.size());
  return result;
}

Assignment best_fit_decreasing_one_budget(const Items& items, const PackRequest& request) {
  const auto capacity = static_cast<int32_t>(request.capacity);
  // Open bins with r tokens left form a doubly linked list starting at head[r]; `levels` holds the
  // r whose list is not empty.
  SuccessorSet levels(static_cast<uint64_t>(capacity) + 1);
  std::vector<int32_t> head(static_cast<std::size_t>(capacity) + 1, -1);
  std::vector<int32_t> next, previous, tokens_left, counts;
  auto unlink = [&](int32_t bin) {
    const auto r = static_cast<std::size_t>(tokens_left[bin]);
    if (previous[bin] >= 0) next[previous[bin]] = next[bin];
    else head[r] = next[bin];
    if (next[bin] >= 0) previous[next[bin]] = previous[bin];
    if (head[r] < 0) levels.erase(r);
  };
  auto link = [&](int32_t bin) {
    const auto r = static_cast<std::size_t>(tokens_left[bin]);
    if (head[r] < 0) levels.insert(r);
    previous[bin] = -1;
    next[bin] = head[r];
    if (head[r] >= 0) previous[head[r]] = bin;
    head[r] = bin;
  };
  Assignment result{std::vector<int32_t>(items.order.size()), 0, "best-fit-decreasing"};
  for (std::size_t k = 0; k < items.order.size(); ++k) {
    const int32_t index = items.order[k];
    const int32_t tokens = items.tokens[index];
    const uint64_t level = levels.next_at_or_after(static_cast<uint64_t>(tokens));
    int32_t bin = level <= static_cast<uint64_t>(capacity) ? head[level] : -1;
    if (bin < 0) {
      bin = static_cast<int32_t>(tokens_left.size());
      tokens_left.push_back(capacity);
      counts.push_back(0);
      next.push_back(-1);
      previous.push_back(-1);
    } else {
      unlink(bin);
    }
    tokens_left[bin] -= tokens;
    ++counts[bin];
    const bool at_cap = request.max_per_bin > 0 && counts[bin] >= request.max_per_bin;
    if (tokens_left[bin] > 0 && !at_cap) link(bin);
    result.bin_of[k] = bin;
  }
  result.num_bins = static_cast<int64_t>(tokens_left.size());
  return result;
}

Assignment best_fit_decreasing_two_budgets(const Items& items, const PackRequest& request) {
  const auto capacity = static_cast<int32_t>(request.capacity);
  BestFitLevels levels(capacity);
  std::vector<int32_t> tokens_left, patches_left, counts;
  Assignment result{std::vector<int32_t>(items.order.size()), 0, "best-fit-decreasing"};
  for (std::size_t k = 0; k < items.order.size(); ++k) {
    const int32_t index = items.order[k];
    const int32_t tokens = items.tokens[index];
    const int32_t patches = items.patches[index];
    int32_t bin = levels.take(tokens, patches);
    if (bin < 0) {
      bin = static_cast<int32_t>(tokens_left.size());
      tokens_left.push_back(capacity);
      patches_left.push_back(static_cast<int32_t>(request.patch_capacity));
      counts.push_back(0);
    }
    tokens_left[bin] -= tokens;
    patches_left[bin] -= patches;
    ++counts[bin];
    const bool at_cap = request.max_per_bin > 0 && counts[bin] >= request.max_per_bin;
    if (tokens_left[bin] > 0 && !at_cap) levels.put(bin, tokens_left[bin], patches_left[bin]);
    result.bin_of[k] = bin;
  }
  result.num_bins = static_cast<int64_t>(tokens_left.size());
  return result;
}

Assignment best_fit_decreasing(const Items& items, const PackRequest& request) {
  return items.patches != nullptr ? best_fit_decreasing_two_budgets(items, request)
                                  : best_fit_decreasing_one_budget(items, request);
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// CSR of the winning assignment, bins listed in a seeded pseudo-random order (Fisher-Yates with
// splitmix64: platform-independent, unlike std::shuffle).
void write_bins(const Items& items, const Assignment& assignment, uint64_t seed, PackResult& out) {
  const auto num_bins = static_cast<std::size_t>(assignment.num_bins);
  std::vector<int32_t> listed(num_bins);
  std::iota(listed.begin(), listed.end(), 0);
  uint64_t state = seed;
  for (std::size_t i = num_bins; i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(splitmix64(state) % i);
    std::swap(listed[i - 1], listed[j]);
  }
  std::vector<int64_t> position(num_bins);  // listed position of each bin
  for (std::size_t p = 0; p < num_bins; ++p) position[static_cast<std::size_t>(listed[p])] = static_cast<int64_t>(p);
  out.bin_offsets.assign(num_bins + 1, 0);
  for (int32_t bin : assignment.bin_of) ++out.bin_offsets[static_cast<std::size_t>(position[bin]) + 1];
  std::partial_sum(out.bin_offsets.begin(), out.bin_offsets.end(), out.bin_offsets.begin());
  std::vector<int64_t> cursor(out.bin_offsets.begin(), out.bin_offsets.end() - 1);
  out.bin_samples.resize(items.order.size());
  for (std::size_t k = 0; k < items.order.size(); ++k) {
    const auto p = static_cast<std::size_t>(position[assignment.bin_of[k]]);
    out.bin_samples[static_cast<std::size_t>(cursor[p]++)] = items.order[k];
  }
}

// Runs the selected candidates, at the same time when threads >= 2. A candidate that did not run
// has num_bins = -1.
std::pair<Assignment, Assignment> run_candidates(const Items& items, const PackRequest& request,
                                                 bool run_first_fit, bool run_best_fit) {
  Assignment first_fit, best_fit;
  first_fit.num_bins = best_fit.num_bins = -1;
  auto first = [&] { first_fit = first_fit_decreasing(items, request); };
  auto best = [&] { best_fit = best_fit_decreasing(items, request); };
  if (run_first_fit && run_best_fit && request.threads >= 2) {
    std::exception_ptr worker_error;
    std::thread worker([&] {
      try {
        best();
      } catch (...) {
        worker_error = std::current_exception();
      }
    });
    try {
      first();
    } catch (...) {
      worker.join();
      throw;
    }
    worker.join();
    if (worker_error) std::rethrow_exception(worker_error);
  } else {
    if (run_first_fit) first();
    if (run_best_fit) best();
  }
  return {std::move(first_fit), std::move(best_fit)};
}

void check_request(const PackRequest& request) {
  if (request.capacity <= 0 || request.capacity > INT32_MAX) {
    throw std::invalid_argument("capacity must be in [1, 2^31), got " + std::to_string(request.capacity));
  }
  if (request.patch_capacity < 0 || request.patch_capacity > INT32_MAX) {
    throw std::invalid_argument("patch capacity must be in [0, 2^31), got " +
                                std::to_string(request.patch_capacity));
  }
  if (request.max_per_bin < 0) {
    throw std::invalid_argument("max samples per bin must be >= 0, got " + std::to_string(request.max_per_bin));
  }
  if (request.count > static_cast<std::size_t>(INT32_MAX)) {
    throw std::invalid_argument("at most 2^31 - 1 samples can be packed at once");
  }
  for (std::size_t i = 0; i < request.count; ++i) {
    if (request.tokens[i] <= 0) {
      throw std::invalid_argument("sample " + std::to_string(i) + " has " + std::to_string(request.tokens[i]) +
                                  " tokens; token counts must be positive");
    }
    if (request.patches != nullptr && request.patches[i] < 0) {
      throw std::invalid_argument("sample " + std::to_string(i) + " has " + std::to_string(request.patches[i]) +
                                  " patches; patch counts must be >= 0");
    }
  }
}

}  // namespace

PackResult pack(const PackRequest& request) {
  check_request(request);
  const bool two_dimensions = request.patches != nullptr && request.patch_capacity > 0;
  PackResult out;
  Items items{{}, request.tokens, two_dimensions ? request.patches : nullptr};
  items.order.reserve(request.count);
  for (std::size_t i = 0; i < request.count; ++i) {
    const auto index = static_cast<int32_t>(i);
    if (request.tokens[i] > request.capacity) {
      out.rejected.push_back(index);
      out.rejected_reasons.push_back(static_cast<uint8_t>(RejectReason::kTokensOverCapacity));
    } else if (two_dimensions && request.patches[i] > request.patch_capacity) {
      out.rejected.push_back(index);
      out.rejected_reasons.push_back(static_cast<uint8_t>(RejectReason::kPatchesOverCapacity));
    } else {
      items.order.push_back(index);
    }
  }
  // Largest first: by tokens, then (two dimensions) by patches, then by input index.
  if (two_dimensions) {
    sort_descending(items.order, [&](int32_t i) { return request.patches[i]; }, request.patch_capacity);
  }
  sort_descending(items.order, [&](int32_t i) { return request.tokens[i]; }, request.capacity);

  const bool run_best_fit =
      request.best_fit && request.capacity <= (two_dimensions ? kBestFitMaxCapacityTwoBudgets
                                                              : kBestFitMaxCapacity);
  if (!request.first_fit && !run_best_fit) {
    throw std::invalid_argument(
        request.best_fit ? "best-fit alone cannot run at this capacity (limit 2^24, 2^20 with patches)"
                         : "no packing heuristic selected");
  }
  const auto [first_fit, best_fit] = run_candidates(items, request, request.first_fit, run_best_fit);
  const bool first_fit_wins =
      first_fit.num_bins >= 0 && (best_fit.num_bins < 0 || first_fit.num_bins <= best_fit.num_bins);
  const Assignment& winner = first_fit_wins ? first_fit : best_fit;
  out.algorithm = winner.algorithm;
  write_bins(items, winner, request.seed, out);
  return out;
}

}  // namespace ov_packing
