// The conv blocks of a small CNN on the CPU, forward and backward, for the 'cpu-native' engine
// (mnist_lab/native.py builds this file with the system C++ compiler and calls it via ctypes).
//
// A block is conv (stride 1, square kernel, zero padding) -> 2x2 max-pool -> ReLU; the other
// order, ReLU before the pool, gives the same values and gradients. Per image and per thread:
// the forward keeps each pooled output's winning position (the first maximum in row-major
// order, as PyTorch's max_pool2d, or -1 where ReLU is off), so the backward only visits those
// positions: a quarter of the conv outputs or fewer, where oneDNN works on all of them.
//
// Layouts (float32, C-contiguous): a block's input is (N, Cin, Hp, Wp) with the padding already
// in place (its border stays zero); weights are PyTorch's (Cout, Cin, k, k).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>
#include <omp.h>

namespace {

constexpr int kLanes = 8;     // output columns computed together (one AVX register of floats)
constexpr int kChunk = 32;    // a position's input-gradient row is padded to a multiple of this (4 registers)
constexpr int kSlots = 8;     // weight-gradient registers summed together
constexpr int kCoBlock = 6;   // output channels computed together, at most (2 rows x 6 x 1 register)

struct Block {
  int cin, hp, wp;      // input, padding included
  int cout, k;
  int ho, wo;           // conv output
  int po_h, po_w;       // pooled output
  int out_pad;          // zero border of the buffer the pooled output is written into
  int64_t in_size() const { return (int64_t)cin * hp * wp; }
  int64_t pooled_size() const { return (int64_t)cout * po_h * po_w; }
  int out_wp() const { return po_w + 2 * out_pad; }
  int out_hp() const { return po_h + 2 * out_pad; }
};

typedef float v8 __attribute__((vector_size(32)));  // kLanes floats; GCC and Clang vector extension
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8 load8(const float* p) {  // unaligned
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

template <int CB, int R, int K>
void conv_rows(const Block& b, const float* in, const float* wt, const float* bias, int co0, int y0, float* z, int zw) {
  // R output rows x CB channels x kLanes columns in registers. wt: this group's weights as
  // (cin, k, k, CB), so the CB weights of a tap are adjacent and each is loaded once for R rows.
  // K: the kernel size when known at compile time (the loops over it unroll), else 0.
  const int k = K ? K : b.k;
  for (int x0 = 0; x0 < b.wo; x0 += kLanes) {
    v8 acc[R][CB];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CB; ++c) acc[r][c] = v8{} + bias[co0 + c];
    const float* w = wt;
    for (int ci = 0; ci < b.cin; ++ci) {
      for (int ky = 0; ky < k; ++ky, w += k * CB) {
        const float* row = in + ((int64_t)ci * b.hp + y0 + ky) * b.wp + x0;
        for (int kx = 0; kx < k; ++kx) {
          v8 v[R];
          for (int r = 0; r < R; ++r) v[r] = load8(row + r * b.wp + kx);
          for (int c = 0; c < CB; ++c) {
            const float wc = w[kx * CB + c];
            for (int r = 0; r < R; ++r) acc[r][c] += wc * v[r];
          }
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CB; ++c) store8(z + ((int64_t)(co0 + c) * b.ho + y0 + r) * zw + x0, acc[r][c]);
  }
}

template <int CB, int K>
void conv_channels(const Block& b, const float* in, const float* wt, const float* bias, int co0, float* z, int zw) {
  int y = 0;
  for (; y + 2 <= b.ho; y += 2) conv_rows<CB, 2, K>(b, in, wt, bias, co0, y, z, zw);
  if (y < b.ho) conv_rows<CB, 1, K>(b, in, wt, bias, co0, y, z, zw);
}

template <int CB>
void conv_group(const Block& b, const float* in, const float* wt, const float* bias, int co0, float* z, int zw) {
  switch (b.k) {  // the usual sizes unrolled
    case 3: conv_channels<CB, 3>(b, in, wt, bias, co0, z, zw); break;
    case 5: conv_channels<CB, 5>(b, in, wt, bias, co0, z, zw); break;
    case 7: conv_channels<CB, 7>(b, in, wt, bias, co0, z, zw); break;
    default: conv_channels<CB, 0>(b, in, wt, bias, co0, z, zw);
  }
}

// Output channels go in groups of near-equal size, at most kCoBlock.
inline int n_groups(int cout) { return (cout + kCoBlock - 1) / kCoBlock; }
inline int group_size(int cout, int g) { return cout / n_groups(cout) + (g < cout % n_groups(cout) ? 1 : 0); }

// PyTorch's (cout, cin, k, k) weights -> per group of cb channels, (cin, k, k, cb), groups in order.
std::vector<float> pack_weights(const Block& b, const float* w) {
  const int taps = b.cin * b.k * b.k;
  std::vector<float> packed((int64_t)b.cout * taps);
  for (int g = 0, co0 = 0; g < n_groups(b.cout); co0 += group_size(b.cout, g), ++g) {
    const int cb = group_size(b.cout, g);
    float* dst = packed.data() + (int64_t)co0 * taps;
    for (int c = 0; c < cb; ++c)
      for (int t = 0; t < taps; ++t) dst[(int64_t)t * cb + c] = w[(int64_t)(co0 + c) * taps + t];
  }
  return packed;
}

// z (cout, ho, zw) = conv(in) + bias, zw = round_up(wo, kLanes). The last chunk of a row reads
// up to kLanes - 1 floats past the row's end: `in` has that much slack.
void conv(const Block& b, const float* in, const float* packed, const float* bias, float* z, int zw) {
  const int64_t taps = (int64_t)b.cin * b.k * b.k;
  for (int g = 0, co = 0; g < n_groups(b.cout); co += group_size(b.cout, g), ++g) {
    const float* wt = packed + co * taps;
    switch (group_size(b.cout, g)) {
      case 6: conv_group<6>(b, in, wt, bias, co, z, zw); break;
      case 5: conv_group<5>(b, in, wt, bias, co, z, zw); break;
      case 4: conv_group<4>(b, in, wt, bias, co, z, zw); break;
      case 3: conv_group<3>(b, in, wt, bias, co, z, zw); break;
      case 2: conv_group<2>(b, in, wt, bias, co, z, zw); break;
      case 1: conv_group<1>(b, in, wt, bias, co, z, zw); break;
    }
  }
}

// Max-pool 2x2 then ReLU from z into `out` (interior of a buffer with a zero border of
// b.out_pad), keeping each output's winning flat index into (ho, wo), or -1 where ReLU is off.
void pool_relu(const Block& b, const float* z, int zw, float* out, int32_t* win) {
  // branch-free over kLanes outputs at a time: a max with data-dependent branches mispredicts
  const int owp = b.out_wp(), ohp = b.out_hp(), p = b.out_pad;
  for (int c = 0; c < b.cout; ++c) {
    for (int py = 0; py < b.po_h; ++py) {
      const float* r0 = z + ((int64_t)c * b.ho + 2 * py) * zw;
      const float* r1 = r0 + zw;
      for (int px0 = 0; px0 < b.po_w; px0 += kLanes) {
        const int lanes = std::min(kLanes, b.po_w - px0);
        v8 q[4] = {};  // the 2x2 window's values in row-major order, one lane per output
        for (int l = 0; l < lanes; ++l) {
          const int x = 2 * (px0 + l);
          q[0][l] = r0[x]; q[1][l] = r0[x + 1]; q[2][l] = r1[x]; q[3][l] = r1[x + 1];
        }
        v8 best = q[0];
        v8i at = v8i{} + 0;
        for (int j = 1; j < 4; ++j) {  // as PyTorch: strictly greater wins (the first maximum), or NaN
          const v8i gt = (q[j] > best) | (q[j] != q[j]);
          best = gt ? q[j] : best;
          at = gt ? v8i{} + j : at;
        }
        const v8i on = (best > v8{}) | (best != best);  // ReLU keeps NaN
        for (int l = 0; l < lanes; ++l) {
          const int px = px0 + l;
          out[((int64_t)c * ohp + py + p) * owp + px + p] = on[l] ? best[l] : 0.0f;
          win[((int64_t)c * b.po_h + py) * b.po_w + px] =
              on[l] ? (2 * py + at[l] / 2) * b.wo + 2 * px + at[l] % 2 : -1;
        }
      }
    }
  }
}

std::vector<Block> read_blocks(int n_blocks, const int* dims) {
  // dims per block: cin, hp, wp, cout, k, out_pad
  std::vector<Block> blocks(n_blocks);
  for (int i = 0; i < n_blocks; ++i) {
    const int* d = dims + 6 * i;
    Block& b = blocks[i];
    b.cin = d[0]; b.hp = d[1]; b.wp = d[2]; b.cout = d[3]; b.k = d[4]; b.out_pad = d[5];
    b.ho = b.hp - b.k + 1; b.wo = b.wp - b.k + 1;
    b.po_h = b.ho / 2; b.po_w = b.wo / 2;
  }
  return blocks;
}

// ---------------------------------------------------------------------------------- backward
// Per image and block, only the conv outputs that won their pool window (and passed the ReLU)
// carry a gradient. A channel's weight gradient sums its winners' input patches (times their
// gradients), a kernel row at a time in registers. The input gradient at a position is the sum
// of its winners' weight rows, added back into the input's pixels (col2im).

struct BackwardBlock {
  int kv;                  // registers per kernel row: a weight-gradient row is kv * kLanes floats
  int n_slots;             // registers per channel's weight gradient: cin * k * kv
  std::vector<int> slot_in;  // per register: its kernel row's offset in the block input, from the patch corner
  int kp;                  // a weight row for the input gradient: cin * k * k rounded up to kChunk
  int64_t w_off, b_off;    // where this block's weight and bias gradients sit in a run's sums
  std::vector<float> wpad; // (cout, kp) weights, zero-padded rows
  v8i mask[2];             // lanes < k of the first and second kLanes of a kernel row (all ones)
  void init(const Block& b, const float* w, int64_t offset) {
    const int kn = b.cin * b.k * b.k;
    kv = (b.k + kLanes - 1) / kLanes;
    n_slots = b.cin * b.k * kv;
    slot_in.assign(n_slots, 0);
    for (int ci = 0; ci < b.cin; ++ci)
      for (int ky = 0; ky < b.k; ++ky)
        for (int h = 0; h < kv; ++h) slot_in[(ci * b.k + ky) * kv + h] = (ci * b.hp + ky) * b.wp + h * kLanes;
    kp = round_up(kn, kChunk);
    w_off = offset;
    b_off = offset + (int64_t)b.cout * n_slots * kLanes;
    wpad.assign((int64_t)b.cout * kp, 0.0f);
    for (int co = 0; co < b.cout; ++co) std::memcpy(wpad.data() + (int64_t)co * kp, w + (int64_t)co * kn, sizeof(float) * kn);
    for (int l = 0; l < kLanes; ++l) {
      mask[0][l] = l < b.k ? -1 : 0;
      mask[1][l] = l + kLanes < b.k ? -1 : 0;
    }
  }
  // the gradient of weight (co, ci, ky, kx) in a run's sums
  int64_t grad_at(const Block& b, int co, int ci, int ky, int kx) const {
    return w_off + (int64_t)co * n_slots * kLanes + ((ci * b.k + ky) * kv + kx / kLanes) * kLanes + kx % kLanes;
  }
};

struct BackwardScratch {  // one per thread and call
  std::vector<float> g_in, g_next;  // gradient of a block's input / of its pooled output
  std::vector<float> g_col;         // one position's input gradient, as a weight row
  std::vector<int32_t> count;       // winners per position, then where each position's winners start
  std::vector<int32_t> win_pos, win_at, by_pos, used;
  std::vector<int> ch_start;        // where each channel's winners start in win_*
  std::vector<float> win_g;
  BackwardScratch(const std::vector<Block>& blocks, const std::vector<BackwardBlock>& bb) {
    int64_t g_max = 0, pos_max = 0, kp_max = 0, win_max = 0;
    int cout_max = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      const Block& b = blocks[i];
      g_max = std::max({g_max, b.in_size(), b.pooled_size()});
      pos_max = std::max<int64_t>(pos_max, (int64_t)b.ho * b.wo);
      kp_max = std::max<int64_t>(kp_max, bb[i].kp);
      win_max = std::max(win_max, b.pooled_size());
      cout_max = std::max(cout_max, b.cout);
    }
    g_in.resize(g_max + 2 * kLanes);  // col2im reads and rewrites up to 2 * kLanes - 1 past a row
    g_next.resize(g_max);
    g_col.resize(kp_max + 2 * kLanes);  // col2im reads whole registers
    count.resize(pos_max + 1);
    win_pos.resize(win_max); win_at.resize(win_max); by_pos.resize(win_max); used.resize(pos_max);
    win_g.resize(win_max);
    ch_start.resize(cout_max + 1);
  }
};

// gw[s0 .. s0 + S) += the winners w0..w1's gradients times their input patches' kernel rows
// s0 .. s0 + S, in S registers.
template <int S>
void sum_patches(const Block& b, const BackwardBlock& bb, const BackwardScratch& s, const float* in, int w0, int w1,
                 int s0, float* gw) {
  v8 sum[S];
  const int* off = bb.slot_in.data() + s0;
  for (int j = 0; j < S; ++j) sum[j] = load8(gw + (s0 + j) * kLanes);
  for (int w = w0; w < w1; ++w) {
    const int pos = s.win_pos[w];
    const float* corner = in + (pos / b.wo) * b.wp + pos % b.wo;  // the patch's top-left pixel
    const float g = s.win_g[w];
    for (int j = 0; j < S; ++j) sum[j] += g * load8(corner + off[j]);
  }
  for (int j = 0; j < S; ++j) store8(gw + (s0 + j) * kLanes, sum[j]);
}

void backward_block(const std::vector<Block>& blocks, const std::vector<BackwardBlock>& bbs, int i,
                    const float* in, const int32_t* win, float* acc, BackwardScratch& s) {
  const Block& b = blocks[i];
  const BackwardBlock& bb = bbs[i];
  const int k = b.k, kp = bb.kp, n_pos = b.ho * b.wo, po = b.po_h * b.po_w;
  // the winners with a gradient, in channel order, without data-dependent branches
  std::fill(s.count.begin(), s.count.begin() + n_pos + 1, 0);
  std::vector<int>& ch_start = s.ch_start;
  int n_win = 0;
  for (int co = 0; co < b.cout; ++co) {
    ch_start[co] = n_win;
    for (int q = 0; q < po; ++q) {
      const int j = co * po + q;
      const int32_t pos = win[j];
      const float g = s.g_next[j];
      const int on = pos >= 0 && g != 0.0f;
      s.win_pos[n_win] = pos; s.win_g[n_win] = g; s.win_at[n_win] = co;
      s.count[pos + 1] += on;  // pos -1 (ReLU off) counts into count[0], reset below
      n_win += on;
    }
  }
  ch_start[b.cout] = n_win;
  s.count[0] = 0;
  int n_used = 0;
  for (int pos = 0; pos < n_pos; ++pos) {
    s.used[n_used] = pos;
    n_used += s.count[pos + 1] != 0;
    s.count[pos + 1] += s.count[pos];  // count[pos]: where pos's winners start in by_pos
  }
  for (int co = 0; co < b.cout; ++co) {  // weight and bias gradients, a channel at a time
    float* gw = acc + bb.w_off + (int64_t)co * bb.n_slots * kLanes;
    const int w0 = ch_start[co], w1 = ch_start[co + 1];
    int s0 = 0;
    for (; s0 + kSlots <= bb.n_slots; s0 += kSlots) sum_patches<kSlots>(b, bb, s, in, w0, w1, s0, gw);
    switch (bb.n_slots - s0) {  // the last few kernel rows
      case 7: sum_patches<7>(b, bb, s, in, w0, w1, s0, gw); break;
      case 6: sum_patches<6>(b, bb, s, in, w0, w1, s0, gw); break;
      case 5: sum_patches<5>(b, bb, s, in, w0, w1, s0, gw); break;
      case 4: sum_patches<4>(b, bb, s, in, w0, w1, s0, gw); break;
      case 3: sum_patches<3>(b, bb, s, in, w0, w1, s0, gw); break;
      case 2: sum_patches<2>(b, bb, s, in, w0, w1, s0, gw); break;
      case 1: sum_patches<1>(b, bb, s, in, w0, w1, s0, gw); break;
    }
    float gb = 0.0f;
    for (int w = w0; w < w1; ++w) gb += s.win_g[w];
    acc[bb.b_off + co] += gb;
  }
  if (i == 0) return;  // the images need no gradient
  for (int w = 0; w < n_win; ++w) s.by_pos[s.count[s.win_pos[w]]++] = w;  // now count[pos]: where pos's winners end
  std::fill(s.g_in.begin(), s.g_in.begin() + b.in_size(), 0.0f);
  for (int u = 0; u < n_used; ++u) {  // the input gradient of each used position's patch, then col2im
    const int pos = s.used[u], y = pos / b.wo, x = pos % b.wo;
    const int begin = pos == 0 ? 0 : s.count[pos - 1], end = s.count[pos];
    for (int t = 0; t < kp; t += kChunk) {
      v8 sum[kChunk / kLanes] = {};
      for (int j = begin; j < end; ++j) {
        const int w = s.by_pos[j];
        const float* wrow = bb.wpad.data() + (int64_t)s.win_at[w] * kp + t;
        for (int v = 0; v < kChunk / kLanes; ++v) sum[v] += s.win_g[w] * load8(wrow + v * kLanes);
      }
      for (int v = 0; v < kChunk / kLanes; ++v) store8(s.g_col.data() + t + v * kLanes, sum[v]);
    }
    for (int ci = 0; ci < b.cin; ++ci)
      for (int ky = 0; ky < k; ++ky) {
        float* dst = s.g_in.data() + ((int64_t)ci * b.hp + y + ky) * b.wp + x;
        const float* src = s.g_col.data() + (ci * k + ky) * k;
        for (int kx = 0, h = 0; kx < k; kx += kLanes, ++h)  // lanes >= k add zero
          store8(dst + kx, load8(dst + kx) + (bb.mask[h] ? load8(src + kx) : v8{}));
      }
  }
  const Block& prev = blocks[i - 1];  // its pooled output is this block's input interior
  const int p = prev.out_pad;
  for (int c = 0; c < b.cin; ++c)
    for (int y = 0; y < prev.po_h; ++y)
      for (int x = 0; x < prev.po_w; ++x)
        s.g_next[((int64_t)c * prev.po_h + y) * prev.po_w + x] = s.g_in[((int64_t)c * b.hp + y + p) * b.wp + x + p];
}

// Runs of images a backward sums separately: enough for up to kMaxChunks threads to share the
// batch, at least kMinImages images each (each run's sums cost a buffer to clear and add).
constexpr int kMaxChunks = 8, kMinImages = 4;
int chunks(int n) { return std::max(1, std::min(kMaxChunks, n / kMinImages)); }

// Inside a parallel region: every thread runs `allocate`; an out-of-memory is caught (an
// exception must not leave the region) and marked in *failed. True when no thread failed, the
// same answer for all, so the work-sharing loop after it is entered by all or by none.
template <class F>
bool every_thread_allocated(F allocate, int* failed) {
  try {
    allocate();
  } catch (const std::bad_alloc&) {
#pragma omp atomic write
    *failed = 1;
  }
#pragma omp barrier
  int stop;
#pragma omp atomic read
  stop = *failed;
  return !stop;
}

}  // namespace

extern "C" {

// The sizes native.py allocates by, from the constants the kernels use (one source of truth).
// Floats of slack every buffer carries past its end: whole registers are read and written there.
int conv_blocks_buffer_slack() { return 2 * kLanes; }

// How many separately summed runs of images a backward of n images uses (native.py sizes by it).
int conv_blocks_chunks(int n) { return chunks(n); }

// Floats of one run's weight- and bias-gradient sums for a block (as BackwardBlock lays them
// out: every kernel row padded to whole registers).
int64_t conv_blocks_gradient_floats(int cin, int cout, int k) {
  const int kv = (k + kLanes - 1) / kLanes;
  return (int64_t)cout * cin * k * kv * kLanes + cout;
}

// Both entry points return 2 when their scratch memory could not be allocated (nothing computed),
// 1 for impossible sizes.

// Forward of all blocks for images [0, n). bufs[i]: block i's input (N, cin, hp, wp); bufs[n_blocks]:
// the last pooled output (N, cout, po_h, po_w), which the fully-connected part flattens.
// wins[i]: (N, cout, po_h, po_w) int32. The buffers carry 2 * kLanes floats of slack at their end.
int conv_blocks_forward(int n, int n_blocks, const int* dims, const float* const* weights,
                        const float* const* biases, float* const* bufs, int32_t* const* wins, int n_threads) {
  try {
    const std::vector<Block> blocks = read_blocks(n_blocks, dims);
    std::vector<std::vector<float>> wts(n_blocks);
    int64_t z_max = 0;
    for (int i = 0; i < n_blocks; ++i) {
      const Block& b = blocks[i];
      if (b.ho < 2 || b.wo < 2) return 1;
      wts[i] = pack_weights(b, weights[i]);
      z_max = std::max(z_max, (int64_t)b.cout * b.ho * round_up(b.wo, kLanes));
    }
    int failed = 0;
#pragma omp parallel num_threads(n_threads)
    {
      std::vector<float> z;  // conv outputs
      if (every_thread_allocated([&] { z.resize(z_max); }, &failed)) {
#pragma omp for schedule(dynamic, 4)  // a thread the OS pauses holds up a few images, not half the batch
        for (int img = 0; img < n; ++img) {
          for (int i = 0; i < n_blocks; ++i) {
            const Block& b = blocks[i];
            const int zw = round_up(b.wo, kLanes);
            conv(b, bufs[i] + img * b.in_size(), wts[i].data(), biases[i], z.data(), zw);
            const int64_t out_size = (int64_t)b.cout * b.out_hp() * b.out_wp();
            pool_relu(b, z.data(), zw, bufs[i + 1] + img * out_size, wins[i] + img * b.pooled_size());
          }
        }
      }
    }
    return failed ? 2 : 0;
  } catch (const std::bad_alloc&) {
    return 2;
  }
}

// Backward: grad_out (N, cout, po_h, po_w) of the last block -> grad_w[i], grad_b[i] (overwritten).
// The batch is cut into conv_blocks_chunks(n) fixed runs of images; each run's gradients are summed
// on their own and the sums added in run order, so the result is the same for any thread count
// (the trainer may change it between steps) and the runs go to whichever thread is free.
int conv_blocks_backward(int n, int n_blocks, const int* dims, const float* const* weights,
                         const float* const* bufs, const int32_t* const* wins, const float* grad_out,
                         float* const* grad_w, float* const* grad_b, int n_threads) {
  try {
    const std::vector<Block> blocks = read_blocks(n_blocks, dims);
    std::vector<BackwardBlock> bb(n_blocks);
    int64_t acc_total = 0;
    for (int i = 0; i < n_blocks; ++i) {
      bb[i].init(blocks[i], weights[i], acc_total);
      acc_total = bb[i].b_off + blocks[i].cout;
    }
    const int n_chunks = chunks(n);
    std::vector<std::vector<float>> sums(n_chunks);  // each run of images' gradient sums
    for (auto& chunk : sums) chunk.assign(acc_total, 0.0f);
    int failed = 0;
#pragma omp parallel num_threads(n_threads)
    {
      std::unique_ptr<BackwardScratch> s;
      const Block& last = blocks[n_blocks - 1];
      if (every_thread_allocated([&] { s = std::make_unique<BackwardScratch>(blocks, bb); }, &failed)) {
#pragma omp for schedule(dynamic, 1)
        for (int c = 0; c < n_chunks; ++c) {
          for (int img = (int64_t)c * n / n_chunks; img < (int64_t)(c + 1) * n / n_chunks; ++img) {
            std::memcpy(s->g_next.data(), grad_out + img * last.pooled_size(), sizeof(float) * last.pooled_size());
            for (int i = n_blocks - 1; i >= 0; --i)
              backward_block(blocks, bb, i, bufs[i] + img * blocks[i].in_size(),
                             wins[i] + img * blocks[i].pooled_size(), sums[c].data(), *s);
          }
        }
      }
    }
    if (failed) return 2;
    for (int i = 0; i < n_blocks; ++i) {
      const Block& b = blocks[i];
      float* dst = grad_w[i];  // (cout, cin, k, k)
      for (int co = 0; co < b.cout; ++co)
        for (int ci = 0; ci < b.cin; ++ci)
          for (int ky = 0; ky < b.k; ++ky)
            for (int kx = 0; kx < b.k; ++kx, ++dst) {
              const int64_t at = bb[i].grad_at(b, co, ci, ky, kx);
              *dst = 0.0f;
              for (int c = 0; c < n_chunks; ++c) *dst += sums[c][at];
            }
      for (int j = 0; j < b.cout; ++j) {
        grad_b[i][j] = 0.0f;
        for (int c = 0; c < n_chunks; ++c) grad_b[i][j] += sums[c][bb[i].b_off + j];
      }
    }
    return 0;
  } catch (const std::bad_alloc&) {
    return 2;
  }
}

}  // extern "C"
