// pybind11 bindings of the packing core: `ov_packing._core`. Work runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "bounds.hpp"

namespace py = pybind11;

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

PYBIND11_MODULE(_core, m) {
  m.doc() = "C++ core of ov_packing: bin packing of sample lengths.";

  m.def(
      "lower_bound_bins",
      [](const Int32Array& lengths, int64_t capacity) {
        if (lengths.ndim() != 1) {
          throw std::invalid_argument("lengths must be one-dimensional, got " +
                                      std::to_string(lengths.ndim()) + " dimensions");
        }
        const int32_t* data = lengths.data();
        const auto count = static_cast<std::size_t>(lengths.size());
        py::gil_scoped_release release;
        return ov_packing::lower_bound_bins(data, count, capacity);
      },
      py::arg("lengths"), py::arg("capacity"),
      "ceil(sum(lengths) / capacity); ValueError for a non-positive or over-capacity length.");
}
