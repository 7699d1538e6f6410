/* The fp32 arithmetic ceiling of this CPU: independent fused multiply-adds on registers, no memory traffic.
 *
 *     cc -O2 -march=native -pthread benchmarks/fma_peak.c -o fma_peak && ./fma_peak THREADS ITERATIONS
 *
 * prints "GFLOP/s CHECKSUM". No GEMM can run faster than this; `machine.fma_ceiling` builds and runs it, and the
 * benchmark reports state how close the GEMM kernels come to it. GCC / Clang vector extensions, so the compiler emits
 * the widest FMA the machine has (-march=native): VEC bytes per vector (64 for AVX-512, 32 for AVX2 / NEON pairs),
 * ACC independent accumulators to cover the FMA latency of two pipes. The accumulators start from values read at run
 * time, so the compiler can neither fold the loop nor merge accumulators (which it did with constant starts).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef VEC
#define VEC 64
#endif
#define LANES (VEC / 4)
#define ACC 12

typedef float vec __attribute__((vector_size(VEC)));

static long iterations;
static float seed;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *run(void *out) {
    vec acc[ACC], b, c;
    for (int l = 0; l < LANES; l++) {
        b[l] = 0.999999f * seed;
        c[l] = 1e-7f * seed;
    }
    for (int i = 0; i < ACC; i++)
        for (int l = 0; l < LANES; l++) acc[i][l] = seed + 0.1f * i + 0.01f * l;
    for (long n = 0; n < iterations; n++)
#pragma GCC unroll 12
        for (int i = 0; i < ACC; i++) acc[i] = acc[i] * b + c;
    float sum = 0.0f;
    for (int i = 0; i < ACC; i++)
        for (int l = 0; l < LANES; l++) sum += acc[i][l];
    *(float *)out = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    iterations = argc > 2 ? atol(argv[2]) : 100000000L;
    seed = argc > 3 ? (float)atof(argv[3]) : 1.0f;
    if (threads < 1 || threads > 256 || iterations < 1) {
        fprintf(stderr, "usage: fma_peak THREADS ITERATIONS [SEED]\n");
        return 2;
    }
    pthread_t *ids = malloc(sizeof(pthread_t) * threads);
    float *sums = malloc(sizeof(float) * threads);
    double start = now();
    for (int t = 0; t < threads; t++) pthread_create(&ids[t], NULL, run, &sums[t]);
    for (int t = 0; t < threads; t++) pthread_join(ids[t], NULL);
    double seconds = now() - start;
    double flops = 2.0 * LANES * ACC * (double)iterations * threads;
    printf("%.3f %g\n", flops / seconds / 1e9, (double)sums[0]);
    return 0;
}
