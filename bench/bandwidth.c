// Read bandwidth for bench/decode.py's floor: THREADS threads (OpenMP, bound to cores) each sum
// their own slice of one array of BYTES bytes (uint64 adds, vectorized by the compiler: bound by
// the memory system, not by arithmetic), in 2 MiB pages (madvise: 4 KiB pages cost a fifth of the
// bandwidth here in TLB misses), best of REPS passes after a warm-up. Prints bytes per second.
//   cc -O3 -march=native -fopenmp bench/bandwidth.c -o bw && OMP_PROC_BIND=true ./bw BYTES THREADS [REPS]
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BYTES THREADS [REPS]\n", argv[0]);
        return 2;
    }
    size_t bytes = strtoull(argv[1], 0, 10), page = (size_t)2 << 20;
    int threads = atoi(argv[2]), reps = argc > 3 ? atoi(argv[3]) : 15;
    size_t n = bytes / 8, size = (n * 8 + page - 1) / page * page;
    uint64_t *a = aligned_alloc(page, size);
    if (!a) return 1;
    madvise(a, size, MADV_HUGEPAGE);
    omp_set_num_threads(threads);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i;  // first touch by the thread that reads it
    double best = 1e30;
    volatile uint64_t sink = 0;
    for (int r = 0; r <= reps; r++) {
        double t0 = now();
        uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
        for (size_t i = 0; i < n; i++) s += a[i];
        double dt = now() - t0;
        sink += s;
        if (r > 0 && dt < best) best = dt;
    }
    printf("%.0f\n", (double)(n * 8) / best);
    return (int)(sink & 0);
}
