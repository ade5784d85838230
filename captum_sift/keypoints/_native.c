/* Native CPU kernels of the "lowe" keypoint backend (float32, one thread).
 *
 * Compiled on first use by _native.py with the machine's C compiler and
 * -ffp-contract=off: every float operation rounds exactly as the eager torch
 * ops of _pyramid.py and _extrema.py do, in the same order, for every element (vector
 * body and scalar tail alike), so a batch gives each image the values that
 * image gets alone. Tensors are (..., H, W, B) contiguous, images innermost.
 *
 * sift_base_f32     gray 0..255 image, doubled (cv2.resize bilinear), images innermost
 * sift_half_f32     every second row and column (the next octave's base)
 * sift_blur_f32     separable Gaussian blur, reflect-101 borders, DoG fused
 * sift_extrema_f32  |D| > thr and a non-strict 3x3x3 extremum, rows outermost
 * sift_octave_f32   one octave streamed by rows: the blurs, the DoG, the extremum search
 * sift_refine_f32   quadratic refinement, contrast and edge tests
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* may_alias: rows are written as vectors and read as floats (and back) */
typedef float v16f __attribute__((vector_size(64), aligned(4), may_alias));
#define LD16(p) (*(const v16f *)(p))
#define ST16(p, v) (*(v16f *)(p) = (v))
#define MAXF(a, b) ((a) > (b) ? (a) : (b))
#define MINF(a, b) ((a) < (b) ? (a) : (b))
#define MAX_RADIUS 255

static int64_t reflect101(int64_t i, int64_t n) {
    if (i >= 0 && i < n) return i;
    if (n == 1) return 0;
    const int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0) i += period;
    return i >= n ? period - i : i;
}

/* Gray (ITU-R 601 luma as kornia.color.rgb_to_grayscale: (0.299 r + 0.587 g)
   + 0.114 b) times 255, rounded to even if `quantize`, of the (B, C, H, W)
   images (C = 1 or 3) into gray (H, W, B); then, if `twice`, doubled into out
   (2H, 2W, B) with the bilinear half-pixel weights of cv2.resize and
   F.interpolate (align_corners=False): exact for quantized images. Returns -1
   when out of memory. */
int sift_base_f32(const float *img, int64_t B, int64_t C, int64_t H, int64_t W, int quantize, int twice, float *gray,
                  float *out) {
    const int64_t hw = H * W;
    const float wr = 0.299f, wg = 0.587f, wb = 0.114f;
    for (int64_t b = 0; b < B; b++) {
        const float *x = img + b * C * hw;
        for (int64_t i = 0; i < hw; i++) {
            float v = C == 3 ? (x[i] * wr + x[hw + i] * wg) + x[2 * hw + i] * wb : x[i];
            v = v * 255.0f;
            gray[i * B + b] = quantize ? nearbyintf(v) : v;
        }
    }
    if (!twice) return 0;
    int64_t *xs = malloc((size_t)(2 * W) * 2 * sizeof(int64_t));
    float *lx = malloc((size_t)(2 * W) * 2 * sizeof(float));
    if (!xs || !lx) {
        free(xs);
        free(lx);
        return -1;
    }
    for (int64_t q = 0; q < 2 * W; q++) { /* the columns' sources and weights, once */
        float sx = 0.5f * ((float)q + 0.5f) - 0.5f;
        if (sx < 0) sx = 0;
        const int64_t x0 = (int64_t)sx;
        xs[2 * q] = x0 * B, xs[2 * q + 1] = (x0 + (x0 < W - 1)) * B;
        lx[2 * q + 1] = sx - (float)x0, lx[2 * q] = 1.0f - lx[2 * q + 1];
    }
    for (int64_t o = 0; o < 2 * H; o++) {
        float sy = 0.5f * ((float)o + 0.5f) - 0.5f;
        if (sy < 0) sy = 0;
        const int64_t y0 = (int64_t)sy, y1 = y0 + (y0 < H - 1);
        const float ly1 = sy - (float)y0, ly0 = 1.0f - ly1;
        const float *g0 = gray + y0 * W * B, *g1 = gray + y1 * W * B;
        float *row = out + o * 2 * W * B;
        for (int64_t q = 0; q < 2 * W; q++) {
            const float lx0 = lx[2 * q], lx1 = lx[2 * q + 1];
            const float *a = g0 + xs[2 * q], *b = g0 + xs[2 * q + 1], *c = g1 + xs[2 * q], *d = g1 + xs[2 * q + 1];
            float *o_ = row + q * B;
            for (int64_t i = 0; i < B; i++) o_[i] = ly0 * (lx0 * a[i] + lx1 * b[i]) + ly1 * (lx0 * c[i] + lx1 * d[i]);
        }
    }
    free(xs);
    free(lx);
    return 0;
}

/* dst (H/2, W/2, B) = src (H, W, B) at even rows and columns. */
void sift_half_f32(const float *src, int64_t H, int64_t W, int64_t B, float *dst) {
    for (int64_t r = 0; r < H / 2; r++)
        for (int64_t c = 0; c < W / 2; c++)
            memcpy(dst + (r * (W / 2) + c) * B, src + (2 * r * W + 2 * c) * B, (size_t)B * sizeof(float));
}

/* o[j] = k[R] m0[j] + sum_t k[R+t] (lo_t[j] + hi_t[j]) for j < n, where row t
   of the window is rows[R + t] (rows given as pointers: reflect-101 resolved). */
static void sym_filter(const float *const *rows, float *o, int64_t n, const float *kern, int64_t R) {
    const float k0 = kern[R];
    const float *m = rows[R];
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        v16f a0 = k0 * LD16(m + j), a1 = k0 * LD16(m + j + 16);
        for (int64_t t = 1; t <= R; t++) {
            const float kt = kern[R + t];
            const float *lo = rows[R - t] + j, *hi = rows[R + t] + j;
            a0 = a0 + kt * (LD16(lo) + LD16(hi));
            a1 = a1 + kt * (LD16(lo + 16) + LD16(hi + 16));
        }
        ST16(o + j, a0);
        ST16(o + j + 16, a1);
    }
    for (; j < n; j++) {
        float a = k0 * m[j];
        for (int64_t t = 1; t <= R; t++) a = a + kern[R + t] * (rows[R - t][j] + rows[R + t][j]);
        o[j] = a;
    }
}

/* Horizontal pass of one (W, B) row through a reflect-101 padded copy in `pad`. */
static void blur_row(const float *s, float *o, float *pad, int64_t W, int64_t B, const float *kern, int64_t R) {
    const float *rows[2 * MAX_RADIUS + 1];
    memcpy(pad + R * B, s, (size_t)(W * B) * sizeof(float));
    for (int64_t c = 0; c < R; c++) {
        memcpy(pad + c * B, s + reflect101(c - R, W) * B, (size_t)B * sizeof(float));
        memcpy(pad + (W + R + c) * B, s + reflect101(W + c, W) * B, (size_t)B * sizeof(float));
    }
    for (int64_t t = -R; t <= R; t++) rows[R + t] = pad + (R + t) * B;
    sym_filter(rows, o, W * B, kern, R);
}

/* The last row of the horizontal pass that output row r of a vertical pass
   of radius R reads (its reflect-101 window lies in rows 0..this). */
static int64_t window_end(int64_t r, int64_t R, int64_t H) {
    int64_t need = r + R;
    if (need > H - 1) need = H - 1;
    if (need < R && R < H) need = R;
    return need;
}

/* dst = blur(src) with the symmetric kernel `kern` of 2R+1 taps; if `dog` is
   not NULL, dog = dst - src as well. Scratch: tmp, a ring of 2R+1 rows (W, B)
   (row k at slot k % (2R+1)), and pad (W+2R, B). The horizontal rows are made
   just before the vertical pass needs them, so the window stays in cache.
   Returns -1 if R is too large. */
int sift_blur_f32(const float *src, float *dst, float *dog, int64_t H, int64_t W, int64_t B, const float *kern,
                  int64_t R, float *tmp, float *pad) {
    if (R > MAX_RADIUS) return -1;
    const int64_t n = W * B, size = 2 * R + 1;
    const float *rows[2 * MAX_RADIUS + 1];
    int64_t done = 0;
    for (int64_t r = 0; r < H; r++) {
        for (const int64_t need = window_end(r, R, H); done <= need; done++)
            blur_row(src + done * n, tmp + (done % size) * n, pad, W, B, kern, R);
        for (int64_t t = -R; t <= R; t++) rows[R + t] = tmp + (reflect101(r + t, H) % size) * n;
        float *o = dst + r * n;
        sym_filter(rows, o, n, kern, R);
        if (dog) {
            float *d = dog + r * n;
            const float *s = src + r * n;
            for (int64_t j = 0; j < n; j++) d[j] = o[j] - s[j];
        }
    }
    return 0;
}

/* Appends to out (n so far, at most cap written) the flat indices into dog
   (L, H, W, B) of the samples of row r in layers 1..L-2, `border` pixels
   away from the left and right borders, with |D| > thr that are >= (D > 0)
   or <= (D < 0) all 26 neighbours, by layer, column, image. flag: scratch of
   (W - 2 border) B + 8 bytes. Returns the new n. */
static int64_t extrema_row(const float *dog, int64_t L, int64_t H, int64_t W, int64_t B, int64_t border, float thr,
                           int64_t r, uint8_t *flag, int64_t *out, int64_t cap, int64_t n) {
    const int64_t sr = W * B, ss = H * sr;
    const int64_t j0 = border * B, len = (W - 2 * border) * B;
    for (int64_t s = 1; s < L - 1; s++) {
        const float *p = dog + s * ss + r * sr + j0;
        /* the 6 face neighbours first (vectorised): 1-3 % of photo samples pass */
        for (int64_t j = 0; j < len; j++) {
            const float v = p[j];
            const float a = p[j - B], b = p[j + B], c = p[j - sr], d = p[j + sr], e = p[j - ss], f = p[j + ss];
            const float mx = MAXF(MAXF(MAXF(a, b), MAXF(c, d)), MAXF(e, f));
            const float mn = MINF(MINF(MINF(a, b), MINF(c, d)), MINF(e, f));
            flag[j] = (uint8_t)(((v > thr) & (v >= mx)) | ((v < -thr) & (v <= mn)));
        }
        for (int64_t j = 0; j < len; j += 8) {
            uint64_t word;
            memcpy(&word, flag + j, 8);
            if (!word) continue;
            for (int64_t k = j; k < j + 8 && k < len; k++) {
                if (!flag[k]) continue;
                const float *q = p + k;
                const float v = *q;
                int ok = 1;
                for (int64_t ds = -ss; ds <= ss && ok; ds += ss)
                    for (int64_t dr = -sr; dr <= sr && ok; dr += sr)
                        for (int64_t dc = -B; dc <= B && ok; dc += B)
                            ok = v > 0 ? v >= q[ds + dr + dc] : v <= q[ds + dr + dc];
                if (ok) {
                    if (n < cap) out[n] = s * ss + r * sr + j0 + k;
                    n++;
                }
            }
        }
    }
    return n;
}

/* Flat indices into dog (L, H, W, B) of its 3x3x3 extrema (see extrema_row),
   ordered by row, then layer, column, image. Writes at most `cap` indices to
   `out` and returns how many there are (-1: out of memory). */
int64_t sift_extrema_f32(const float *dog, int64_t L, int64_t H, int64_t W, int64_t B, int64_t border, float thr,
                         int64_t *out, int64_t cap) {
    const int64_t len = (W - 2 * border) * B;
    int64_t n = 0;
    if (len <= 0 || H <= 2 * border) return 0;
    uint8_t *flag = calloc((size_t)len + 8, 1);
    if (!flag) return -1;
    for (int64_t r = border; r < H - border; r++) n = extrema_row(dog, L, H, W, B, border, thr, r, flag, out, cap, n);
    free(flag);
    return n;
}

/* One octave streamed row by row: Gaussian layer l = 1..L-1 is blurred from
   layer l-1 (layer 0: `base`, (H, W, B)) with kernel l, DoG layer l-1 =
   layer l - layer l-1 is written to dog (L-1, H, W, B), layer `half_layer`'s
   even rows and columns to next (H/2, W/2, B) unless NULL, and the extrema of
   each DoG row are searched as soon as the rows around it exist. Each layer
   lives in a ring of the few rows its readers still need (the full layers
   never touch memory), so an octave costs one write of the DoG, not ~8 full
   passes. The values are those of sift_blur_f32 and sift_extrema_f32, bit
   for bit, and so is the candidate order. */
#define MAX_GAUSS 64

typedef struct {
    const float *base;
    float *dog, *next, *pad;
    int64_t H, W, B, n, half_layer;
    const float *kern[MAX_GAUSS];
    int64_t R[MAX_GAUSS];
    float *hring[MAX_GAUSS], *gring[MAX_GAUSS]; /* rows of the horizontal pass, rows of the layer */
    int64_t hsize[MAX_GAUSS], gsize[MAX_GAUSS], hdone[MAX_GAUSS], gdone[MAX_GAUSS];
} octave_t;

static const float *layer_row(const octave_t *o, int64_t l, int64_t k) {
    return l == 0 ? o->base + k * o->n : o->gring[l] + (k % o->gsize[l]) * o->n;
}

/* Makes rows 0..upto of Gaussian layer l >= 1 (and the DoG rows below them). */
static void produce(octave_t *o, int64_t l, int64_t upto) {
    const int64_t H = o->H, n = o->n, R = o->R[l], hs = o->hsize[l];
    const float *rows[2 * MAX_RADIUS + 1];
    for (; o->gdone[l] <= upto; o->gdone[l]++) {
        const int64_t k = o->gdone[l];
        for (const int64_t need = window_end(k, R, H); o->hdone[l] <= need; o->hdone[l]++) {
            const int64_t j = o->hdone[l];
            if (l > 1) produce(o, l - 1, j);
            blur_row(layer_row(o, l - 1, j), o->hring[l] + (j % hs) * n, o->pad, o->W, o->B, o->kern[l], R);
        }
        for (int64_t t = -R; t <= R; t++) rows[R + t] = o->hring[l] + (reflect101(k + t, H) % hs) * n;
        float *g = o->gring[l] + (k % o->gsize[l]) * n, *d = o->dog + ((l - 1) * H + k) * n;
        sym_filter(rows, g, n, o->kern[l], R);
        const float *prev = layer_row(o, l - 1, k);
        for (int64_t j = 0; j < n; j++) d[j] = g[j] - prev[j];
        if (l == o->half_layer && o->next && !(k & 1) && k / 2 < H / 2) {
            float *dst = o->next + (k / 2) * (o->W / 2) * o->B;
            for (int64_t c = 0; c < o->W / 2; c++) memcpy(dst + c * o->B, g + 2 * c * o->B, (size_t)o->B * sizeof(float));
        }
    }
}

/* Floats of scratch sift_octave_f32 needs (radii[l]: kernel l's radius, l = 1..L-1). */
int64_t sift_octave_scratch(int64_t H, int64_t W, int64_t B, int64_t L, const int64_t *radii) {
    const int64_t n = W * B;
    int64_t rmax = 0, rows = 1; /* the last layer keeps one row */
    for (int64_t l = 1; l < L; l++) {
        rmax = MAXF(rmax, radii[l]);
        rows += 2 * radii[l] + 1 + (l + 1 < L ? radii[l + 1] + 1 : 0);
    }
    return rows * n + (W + 2 * rmax) * B + ((W * B + 8) / 4 + 1);
}

/* Returns the number of extrema (at most cap written to out, as
   sift_extrema_f32), -1 if a radius is too large or L is out of range. */
int64_t sift_octave_f32(const float *base, int64_t H, int64_t W, int64_t B, int64_t L, const float *kerns,
                        const int64_t *radii, int64_t half_layer, float *dog, float *next, float *scratch,
                        int64_t border, float thr, int64_t *out, int64_t cap) {
    if (L < 2 || L > MAX_GAUSS) return -1;
    octave_t o = {.base = base, .dog = dog, .next = next, .H = H, .W = W, .B = B, .n = W * B, .half_layer = half_layer};
    int64_t rmax = 0;
    float *at = scratch;
    for (int64_t l = 1; l < L; l++) {
        if (radii[l] > MAX_RADIUS) return -1;
        o.R[l] = radii[l];
        o.kern[l] = kerns;
        kerns += 2 * radii[l] + 1;
        rmax = MAXF(rmax, radii[l]);
        o.hsize[l] = 2 * radii[l] + 1;
        o.gsize[l] = l + 1 < L ? radii[l + 1] + 1 : 1;
        o.hring[l] = at, at += o.hsize[l] * o.n;
        o.gring[l] = at, at += o.gsize[l] * o.n;
        o.hdone[l] = o.gdone[l] = 0;
    }
    o.pad = at, at += (W + 2 * rmax) * B;
    uint8_t *flag = (uint8_t *)at;
    int64_t n = 0;
    const int search = W * B > 2 * border * B && H > 2 * border;
    for (int64_t r = 0; r < H; r++) {
        produce(&o, L - 1, r); /* every DoG row <= r exists now */
        if (search && r - 1 >= border && r - 1 < H - border)
            n = extrema_row(dog, L - 1, H, W, B, border, thr, r - 1, flag, out, cap, n);
    }
    return n;
}

/* Quadratic refinement of the candidates `cand` (flat indices into dog),
   as _extrema.refine_eager: up to 5 steps, then Lowe's contrast test and the
   edge test. For each kept candidate writes its final sample (layer, r, c,
   image) to out_pos and (xc, xr, xs, |contrast|) to out_fit, in candidate
   order; returns how many were kept. */
int64_t sift_refine_f32(const float *dog, int64_t L, int64_t H, int64_t W, int64_t B, int64_t border,
                        int64_t n_layers, const int64_t *cand, int64_t n, float contrast_threshold,
                        float edge_threshold, float edge_bound, int64_t *out_pos, float *out_fit) {
    const int64_t sc = B, sr = W * B, ss = H * sr;
    const float s = (float)(1.0 / 255.0), hs = (float)(0.5 * (1.0 / 255.0)), qs = (float)(0.25 * (1.0 / 255.0));
    const float limit = (float)(2147483648.0 / 3.0);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t at = cand[i];
        int64_t layer = at / ss, r = (at / sr) % H, c = (at / sc) % W;
        const int64_t img = at % B;
        int converged = 0;
        float x0 = 0, x1 = 0, x2 = 0, contr = 0, dxx = 0, dyy = 0, dxy = 0;
        for (int step = 0; step < 5; step++) {
            const float *q = dog + layer * ss + r * sr + c * sc + img;
            const float v0 = q[0];
            const float gx = (q[sc] - q[-sc]) * hs, gy = (q[sr] - q[-sr]) * hs, gs = (q[ss] - q[-ss]) * hs;
            dxx = (q[sc] + q[-sc] - 2.0f * v0) * s;
            dyy = (q[sr] + q[-sr] - 2.0f * v0) * s;
            const float dss = (q[ss] + q[-ss] - 2.0f * v0) * s;
            dxy = (q[sr + sc] - q[sr - sc] - q[-sr + sc] + q[-sr - sc]) * qs;
            const float dxs = (q[ss + sc] - q[ss - sc] - q[-ss + sc] + q[-ss - sc]) * qs;
            const float dys = (q[ss + sr] - q[ss - sr] - q[-ss + sr] + q[-ss - sr]) * qs;
            /* Cramer's rule, as _solve3 */
            const float c00 = dyy * dss - dys * dys, c01 = dxs * dys - dxy * dss, c02 = dxy * dys - dyy * dxs;
            const float det = dxx * c00 + dxy * c01 + dxs * c02;
            const float c11 = dxx * dss - dxs * dxs, c12 = dxy * dxs - dxx * dys, c22 = dxx * dyy - dxy * dxy;
            if (det == 0) {
                x0 = x1 = x2 = 0;
            } else {
                x0 = -(c00 * gx + c01 * gy + c02 * gs) / det;
                x1 = -(c01 * gx + c11 * gy + c12 * gs) / det;
                x2 = -(c02 * gx + c12 * gy + c22 * gs) / det;
            }
            if (fabsf(x0) < 0.5f && fabsf(x1) < 0.5f && fabsf(x2) < 0.5f) {
                contr = v0 / 255.0f + 0.5f * (gx * x0 + gy * x1 + gs * x2);
                converged = 1;
                break;
            }
            if (!(fabsf(x0) <= limit && fabsf(x1) <= limit && fabsf(x2) <= limit)) break;
            layer += (int64_t)nearbyintf(x2);
            r += (int64_t)nearbyintf(x1);
            c += (int64_t)nearbyintf(x0);
            if (layer < 1 || layer > n_layers || r < border || r >= H - border || c < border || c >= W - border) break;
        }
        if (!converged) continue;
        const float tr = dxx + dyy, det2 = dxx * dyy - dxy * dxy;
        if (!(fabsf(contr) * (float)n_layers >= contrast_threshold && det2 > 0 &&
              tr * tr * edge_threshold < edge_bound * det2))
            continue;
        int64_t *pos = out_pos + 4 * kept;
        float *fit = out_fit + 4 * kept;
        pos[0] = layer, pos[1] = r, pos[2] = c, pos[3] = img;
        fit[0] = x0, fit[1] = x1, fit[2] = x2, fit[3] = fabsf(contr);
        kept++;
    }
    (void)L;
    return kept;
}
