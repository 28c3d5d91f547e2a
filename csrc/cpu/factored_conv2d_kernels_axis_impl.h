// Winograd F(2, 3) along one axis, for the spatial scheme's 3 x 1 and 1 x 3 convs
// (cpu/factored_conv2d_winograd_spatial.cpp): the transforms that factored_conv2d_kernels.h
// declares as WinogradHeight*, WinogradWidth* and WinogradAxisWeights functions, as templates
// over a vector type V (see factored_conv2d_kernels_impl.h, which includes this after
// winograd_b and winograd_g).
//
// F(2, 3): two outputs of a 3-tap filter g from four inputs d with 4 multiplications instead
// of 6: B^T d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3), G g = (g0, (g0 + g1 + g2) / 2,
// (g0 - g1 + g2) / 2, g2), A^T m = (m0 + m1 + m2, m1 - m2 - m3). The first output does not
// read d3, so a tile whose second output lies past the image may read anything there.
#pragma once

#include <cstdint>

namespace trp_ext {
namespace fconv_cpu {
namespace {

// Along the height (see WinogradHeightInputFn): vectorised over the columns of a row. Rows
// outside [0, height) read as zeros; a read that would pass `end` loads only the values
// before it.
template <class V>
void winograd_h_input(const typename V::Scalar* src, int64_t sc, int64_t sy, int64_t height,
                      int64_t row0, const typename V::Scalar* end, int64_t channels,
                      int64_t tile_rows, int64_t width, typename V::Scalar* v,
                      int64_t channel_stride, int64_t point_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const auto load = [&](const T* row, int64_t col) {
    if (row == nullptr) return V::zero();
    const T* p = row + col;
    return end - p >= L ? V::load(p) : V::load_partial(p, end - p);
  };
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t ty = 0; ty < tile_rows; ++ty) {
      const T* rows[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t y = row0 + 2 * ty + k;
        rows[k] = y >= 0 && y < height ? src + c * sc + y * sy : nullptr;
      }
      T* out = v + c * channel_stride + ty * width;
      for (int64_t col = 0; col < width; col += L) {
        Reg r[4];
        winograd_b<V>(load(rows[0], col), load(rows[1], col), load(rows[2], col),
                      load(rows[3], col), r);
        for (int k = 0; k < 4; ++k) V::store(out + k * point_stride + col, r[k]);
      }
    }
  }
}

// Along the height (see WinogradHeightOutputFn): exactly `width` values per row, so that the
// columns around them (the second conv's zero padding) stay as they are.
template <class V>
void winograd_h_output(const typename V::Scalar* m, int64_t rows, int64_t count,
                       int64_t point_stride, int64_t tile_rows, int64_t width,
                       typename V::Scalar* y, int64_t pitch, int64_t row_stride) {
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const int64_t whole = width / L * L;
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t ty = 0; ty < tile_rows; ++ty) {
      const typename V::Scalar* in = m + j * count + ty * width;
      typename V::Scalar* top = y + j * row_stride + 2 * ty * pitch;
      const auto pair = [&](int64_t col, Reg* first, Reg* second) {
        const Reg m0 = V::load(in + col);
        const Reg m1 = V::load(in + point_stride + col);
        const Reg m2 = V::load(in + 2 * point_stride + col);
        const Reg m3 = V::load(in + 3 * point_stride + col);
        *first = V::add(V::add(m0, m1), m2);
        *second = V::sub(V::sub(m1, m2), m3);
      };
      for (int64_t col = 0; col < whole; col += L) {
        Reg first, second;
        pair(col, &first, &second);
        V::store(top + col, first);
        V::store(top + pitch + col, second);
      }
      if (whole < width) {  // reads past the row's products, which exist (see there)
        Reg first, second;
        pair(whole, &first, &second);
        V::store_partial(top + whole, first, width - whole);
        V::store_partial(top + pitch + whole, second, width - whole);
      }
    }
  }
}

// Along the width (see WinogradWidthInputFn): vectorised over kWidth tiles of a row, whose
// inputs 2 tx + k are the even (k = 0, 2) and odd (k = 1, 3) values of two runs.
template <class V>
void winograd_w_input(const typename V::Scalar* src, int64_t plane_stride, int64_t pitch,
                      int64_t channels, int64_t rows, int64_t tiles_w, typename V::Scalar* v,
                      int64_t channel_stride, int64_t point_stride) {
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t y = 0; y < rows; ++y) {
      const typename V::Scalar* row = src + c * plane_stride + y * pitch;
      typename V::Scalar* out = v + c * channel_stride + y * tiles_w;
      for (int64_t t = 0; t < tiles_w; t += L) {
        const typename V::Scalar* run = row + 2 * t;
        Reg d0, d1, d2, d3, r[4];
        V::deinterleave(V::load(run), V::load(run + L), &d0, &d1);
        V::deinterleave(V::load(run + 2), V::load(run + 2 + L), &d2, &d3);
        winograd_b<V>(d0, d1, d2, d3, r);
        for (int k = 0; k < 4; ++k) V::store(out + k * point_stride + t, r[k]);
      }
    }
  }
}

// Along the width, with the epilogue (see WinogradWidthOutputFn): exactly out_w values per row.
template <class V>
void winograd_w_output(const typename V::Scalar* m, int64_t rows, int64_t count,
                       int64_t point_stride, int64_t out_rows, int64_t tiles_w, int64_t out_w,
                       const typename V::Scalar* bias, const typename V::Scalar* res,
                       int64_t res_stride, bool relu, typename V::Scalar* y, int64_t pitch,
                       int64_t row_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  for (int64_t j = 0; j < rows; ++j) {
    const Reg b = V::set1(bias ? bias[j] : T(0));
    for (int64_t row = 0; row < out_rows; ++row) {
      const T* in = m + j * count + row * tiles_w;
      T* out = y + j * row_stride + row * pitch;
      const T* add = res ? res + j * res_stride + row * pitch : nullptr;
      for (int64_t t = 0; t < tiles_w; t += L) {
        const Reg m0 = V::load(in + t);
        const Reg m1 = V::load(in + point_stride + t);
        const Reg m2 = V::load(in + 2 * point_stride + t);
        const Reg m3 = V::load(in + 3 * point_stride + t);
        Reg first, second;
        V::interleave(V::add(V::add(V::add(m0, m1), m2), b),
                      V::add(V::sub(V::sub(m1, m2), m3), b), &first, &second);
        const int64_t n = out_w - 2 * t;  // values left in the row
        const int64_t n1 = n < L ? n : L, n2 = n - L < L ? n - L : L;
        if (add) {
          first = V::add(first, n1 == L ? V::load(add + 2 * t) : V::load_partial(add + 2 * t, n1));
          if (n2 > 0) {
            second = V::add(second, n2 == L ? V::load(add + 2 * t + L)
                                            : V::load_partial(add + 2 * t + L, n2));
          }
        }
        if (relu) {
          first = V::relu(first);
          second = V::relu(second);
        }
        if (n1 == L) {
          V::store(out + 2 * t, first);
        } else {
          V::store_partial(out + 2 * t, first, n1);
        }
        if (n2 == L) {
          V::store(out + 2 * t + L, second);
        } else if (n2 > 0) {
          V::store_partial(out + 2 * t + L, second, n2);
        }
      }
    }
  }
}

// G g for `filters` 3-tap filters stored one after another (see WinogradAxisWeightsFn):
// vectorised over kWidth filters, whose 3 kWidth taps are split into every third value.
template <class V>
void winograd_axis_weights(const typename V::Scalar* w, int64_t filters, typename V::Scalar* u,
                           int64_t point_stride) {
  using T = typename V::Scalar;
  using Reg = typename V::Reg;
  constexpr int L = V::kWidth;
  const Reg half = V::set1(T(0.5));
  const auto points = [&](Reg g0, Reg g1, Reg g2, int64_t f, int64_t n) {
    Reg point[4];
    winograd_g<V>(g0, g1, g2, half, point);
    for (int k = 0; k < 4; ++k) {
      if (n == L) {
        V::store(u + k * point_stride + f, point[k]);
      } else {
        V::store_partial(u + k * point_stride + f, point[k], n);
      }
    }
  };
  int64_t f = 0;
  for (; f + L <= filters; f += L) {
    const T* src = w + 3 * f;
    Reg g0, g1, g2;
    V::deinterleave3(V::load(src), V::load(src + L), V::load(src + 2 * L), &g0, &g1, &g2);
    points(g0, g1, g2, f, L);
  }
  if (f < filters) {  // the last filters through a buffer, its tail zeros
    T taps[3 * L] = {};
    for (int64_t i = 0; i < 3 * (filters - f); ++i) taps[i] = w[3 * f + i];
    Reg g0, g1, g2;
    V::deinterleave3(V::load(taps), V::load(taps + L), V::load(taps + 2 * L), &g0, &g1, &g2);
    points(g0, g1, g2, f, filters - f);
  }
}

}  // namespace
}  // namespace fconv_cpu
}  // namespace trp_ext
