// NV12 surface -> RGB, letterboxed into slot `slot` of a [B, 3, H, W] engine input (FP32 or FP16);
// and, at the end, the samples of boxes that the tracker's looks are made of.
//
// One thread per output pixel of the slot: pixels outside the scaled picture get the pad value,
// pixels inside are sampled bilinearly from the source (luma at pixel centres, chroma at the
// centres of 2x2 luma blocks), converted with the stream's matrix and range, scaled to [0, 1].
// pipeline/s4_infer/gpu_preprocess.py holds the numpy reference of exactly this arithmetic.
// Kernel arguments are scalars only (no structs), so any launcher can pass them.
#include <cuda_fp16.h>

struct YuvToRgb {
    float y_offset, y_scale, c_scale;  // Y' = (Y - y_offset) * y_scale; C' = (C - 128) * c_scale
    float r_v, g_u, g_v, b_u;          // R = Y' + r_v V'; G = Y' - g_u U' - g_v V'; B = Y' + b_u U'
};

__device__ __forceinline__ float bilinear(const unsigned char* plane, int pitch, int w, int h,
                                          int channels, int channel, float x, float y) {
    x = fminf(fmaxf(x, 0.0f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.0f), (float)(h - 1));
    int x0 = (int)x, y0 = (int)y;
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float fx = x - x0, fy = y - y0;
    const unsigned char* r0 = plane + (size_t)y0 * pitch;
    const unsigned char* r1 = plane + (size_t)y1 * pitch;
    float top = r0[x0 * channels + channel] * (1.0f - fx) + r0[x1 * channels + channel] * fx;
    float bottom = r1[x0 * channels + channel] * (1.0f - fx) + r1[x1 * channels + channel] * fx;
    return top * (1.0f - fy) + bottom * fy;
}

__device__ __forceinline__ void store(float* out, size_t i, float v) { out[i] = v; }
__device__ __forceinline__ void store(__half* out, size_t i, float v) { out[i] = __float2half_rn(v); }

template <typename T>
__device__ void letterbox_nv12(const unsigned char* luma, int luma_pitch,
                               const unsigned char* chroma, int chroma_pitch,
                               int src_w, int src_h, T* input, int slot, int dst_w, int dst_h,
                               int pad_x, int pad_y, int scaled_w, int scaled_h,
                               YuvToRgb k, float pad) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    size_t plane = (size_t)dst_w * dst_h;
    size_t base = (size_t)slot * 3 * plane + (size_t)y * dst_w + x;
    int sx = x - pad_x, sy = y - pad_y;
    if (sx < 0 || sy < 0 || sx >= scaled_w || sy >= scaled_h) {
        store(input, base, pad);
        store(input, base + plane, pad);
        store(input, base + 2 * plane, pad);
        return;
    }
    float fx = (sx + 0.5f) * ((float)src_w / scaled_w) - 0.5f;   // source luma coordinates
    float fy = (sy + 0.5f) * ((float)src_h / scaled_h) - 0.5f;
    float cx = (fx + 0.5f) * 0.5f - 0.5f, cy = (fy + 0.5f) * 0.5f - 0.5f;  // chroma coordinates
    int cw = (src_w + 1) / 2, ch = (src_h + 1) / 2;
    float yv = (bilinear(luma, luma_pitch, src_w, src_h, 1, 0, fx, fy) - k.y_offset) * k.y_scale;
    float u = (bilinear(chroma, chroma_pitch, cw, ch, 2, 0, cx, cy) - 128.0f) * k.c_scale;
    float v = (bilinear(chroma, chroma_pitch, cw, ch, 2, 1, cx, cy) - 128.0f) * k.c_scale;
    const float inv = 1.0f / 255.0f;
    store(input, base, fminf(fmaxf((yv + k.r_v * v) * inv, 0.0f), 1.0f));
    store(input, base + plane, fminf(fmaxf((yv - k.g_u * u - k.g_v * v) * inv, 0.0f), 1.0f));
    store(input, base + 2 * plane, fminf(fmaxf((yv + k.b_u * u) * inv, 0.0f), 1.0f));
}

extern "C" __global__ void letterbox_nv12_f32(
        const unsigned char* luma, int luma_pitch, const unsigned char* chroma, int chroma_pitch,
        int src_w, int src_h, float* input, int slot, int dst_w, int dst_h, int pad_x, int pad_y,
        int scaled_w, int scaled_h, float y_offset, float y_scale, float c_scale, float r_v,
        float g_u, float g_v, float b_u, float pad) {
    YuvToRgb k = {y_offset, y_scale, c_scale, r_v, g_u, g_v, b_u};
    letterbox_nv12<float>(luma, luma_pitch, chroma, chroma_pitch, src_w, src_h, input, slot,
                          dst_w, dst_h, pad_x, pad_y, scaled_w, scaled_h, k, pad);
}

extern "C" __global__ void letterbox_nv12_f16(
        const unsigned char* luma, int luma_pitch, const unsigned char* chroma, int chroma_pitch,
        int src_w, int src_h, __half* input, int slot, int dst_w, int dst_h, int pad_x, int pad_y,
        int scaled_w, int scaled_h, float y_offset, float y_scale, float c_scale, float r_v,
        float g_u, float g_v, float b_u, float pad) {
    YuvToRgb k = {y_offset, y_scale, c_scale, r_v, g_u, g_v, b_u};
    letterbox_nv12<__half>(luma, luma_pitch, chroma, chroma_pitch, src_w, src_h, input, slot,
                           dst_w, dst_h, pad_x, pad_y, scaled_w, scaled_h, k, pad);
}

// Looks (pipeline/s5_looks.py): a grid x grid grid of samples over the middle `inner` share of
// each of `n` boxes (x1, y1, x2, y2 in source pixels, float32) of one NV12 picture: luma, U, V as
// bytes into out[box][sample][3], samples in s5_looks' order (sample k: column k / grid, row
// k % grid); one thread per sample. s5_looks._sample is the numpy reference of this arithmetic,
// so only these bytes, never the picture, come to the host.
extern "C" __global__ void sample_nv12_boxes(
        const unsigned char* luma, int luma_pitch, const unsigned char* chroma, int chroma_pitch,
        int src_w, int src_h, const float* boxes, int n, int grid, float inner, unsigned char* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int per = grid * grid;
    if (i >= n * per) return;
    int b = i / per, k = i % per;
    const float* box = boxes + 4 * b;
    float at_x = ((k / grid) + 0.5f) / grid * inner + (1.0f - inner) / 2;
    float at_y = ((k % grid) + 0.5f) / grid * inner + (1.0f - inner) / 2;
    float x = box[0] + (box[2] - box[0]) * at_x, y = box[1] + (box[3] - box[1]) * at_y;
    int xi = (int)fminf(fmaxf(x, 0.0f), (float)(src_w - 1));
    int yi = (int)fminf(fmaxf(y, 0.0f), (float)(src_h - 1));
    int cx = min(xi / 2, (src_w + 1) / 2 - 1), cy = min(yi / 2, (src_h + 1) / 2 - 1);
    unsigned char* o = out + 3 * (size_t)i;
    o[0] = luma[(size_t)yi * luma_pitch + xi];
    o[1] = chroma[(size_t)cy * chroma_pitch + 2 * cx];
    o[2] = chroma[(size_t)cy * chroma_pitch + 2 * cx + 1];
}
