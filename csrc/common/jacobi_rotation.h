// The steps of the batched cyclic Jacobi eigensolver that the CUDA kernel
// (cuda/lowrank_project_jacobi.cu, one block per matrix) and its CPU twin
// (cpu/lowrank_project_batched_twins.cpp) share, so that both run the same rotations in the same
// order: the round-robin pairing, the rotation rule and its thresholds.
#pragma once

#include <cfloat>
#include <cmath>

#include "common/host_device.h"

namespace trp_ext {

// Largest matrix the Jacobi eigensolver takes. On CUDA, A and V in float64 shared memory with a
// padded leading dimension: 2 * 112 * 113 * 8 bytes = 198 KiB, within the 227 KiB a block may opt
// in to on sm_90 (jacobi_eigh_fits also checks the running device). The CPU twin takes the same
// sizes, so that the same matrices reach the same solver.
constexpr int kJacobiMaxSize = 112;
// A sweep limit that only guards against non-convergence, which is reported, not hidden: the
// matrices here are Gram and Rayleigh-Ritz matrices, a few sweeps from diagonal.
constexpr int kJacobiMaxSweeps = 50;

// Pair t of round r (circle method) among `padded` (even) indices: index 0 stays, indices
// 1..padded-1 rotate by one per round, so padded - 1 rounds meet every pair once per sweep and
// the pairs of a round touch disjoint rows and columns. An odd n is padded with a dummy index n,
// whose rotations are the identity.
TRP_HOST_DEVICE inline void jacobi_round_pair(int round, int t, int padded, int* p, int* q) {
  const int ring = padded - 1;
  if (t == 0) {
    *p = 0;
    *q = round % ring + 1;
  } else {
    *p = (t + round) % ring + 1;
    *q = (padded - 1 - t + round) % ring + 1;
  }
  if (*p > *q) {
    const int swap = *p;
    *p = *q;
    *q = swap;
  }
}

// Off-diagonals at or below this are left alone: the Gram matrix's own rounding (~eps ||G||), as
// the CPU's QL deflates below eps ||T||. With eps^2 here, the rounding-level entries of a
// rank-deficient Gram's null block stayed above both thresholds, every sweep's rotations remade
// them, and the solve ran out its sweeps into the redo (a host emulation of the kernel: rank-3
// 16 x 16 still rotated 91 pairs in sweep 50; with this floor, 6-10 sweeps).
TRP_HOST_DEVICE inline double jacobi_floor(double max_abs_diagonal, int n) {
  return DBL_EPSILON * max_abs_diagonal * n + DBL_MIN;
}

// The rotation (c, s) that annihilates a_pq, where it is above the Demmel-Veselic threshold and
// the floor; false (c = 1, s = 0) where it is not.
TRP_HOST_DEVICE inline bool jacobi_rotation(double app, double aqq, double apq, double floor_abs,
                                            double* c, double* s) {
  *c = 1.0;
  *s = 0.0;
  // sqrt of each factor: app * aqq overflows for diagonals past ~2^512 (inputs just inside the
  // unscaled range), which would stop every rotation.
  if (!(fabs(apq) > DBL_EPSILON * sqrt(fabs(app)) * sqrt(fabs(aqq)) && fabs(apq) > floor_abs)) {
    return false;
  }
  const double zeta = (aqq - app) / (2.0 * apq);
  // tan of the rotation angle, the smaller root; 1/(2 zeta) once zeta^2 would overflow
  const double tangent = fabs(zeta) > 1e150
                             ? 0.5 / zeta
                             : (zeta >= 0.0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1.0 + zeta * zeta));
  *c = 1.0 / sqrt(1.0 + tangent * tangent);
  *s = tangent * *c;
  return true;
}

}  // namespace trp_ext
