// Custom layers of the integer U-Net (unet.export.hls4ml): the threshold requantizer and the
// bilinear x2 upsampling with skip concatenation, exactly as unet.integer computes them.
#ifndef NNET_UNET_H_
#define NNET_UNET_H_

#include "nnet_common.h"

namespace nnet {

struct multithreshold_config {
    static const unsigned n_pixels = 1;
    static const unsigned n_chan = 1;
    static const unsigned n_thresholds = 1;
};

// out[p][c] = codes[c][#{k : orientation[c] * acc[p][c] >= thresholds[c][k]}] (thresholds sorted,
// unused slots above every reachable accumulator): FINN's MultiThreshold plus a per-channel lookup.
template <class data_T, class res_T, typename CONFIG_T>
void multithreshold(data_T acc[CONFIG_T::n_pixels * CONFIG_T::n_chan], res_T out[CONFIG_T::n_pixels * CONFIG_T::n_chan],
                    const typename CONFIG_T::orient_t orientation[CONFIG_T::n_chan],
                    const typename CONFIG_T::threshold_t thresholds[CONFIG_T::n_chan * CONFIG_T::n_thresholds],
                    const typename CONFIG_T::code_t codes[CONFIG_T::n_chan * (CONFIG_T::n_thresholds + 1)]) {
Pixels:
    for (unsigned p = 0; p < CONFIG_T::n_pixels; p++) {
    Channels:
        for (unsigned c = 0; c < CONFIG_T::n_chan; c++) {
            typename CONFIG_T::threshold_t a = acc[p * CONFIG_T::n_chan + c];
            if (orientation[c] < 0)
                a = -a;
            unsigned n = 0;
        Compare:
            for (unsigned k = 0; k < CONFIG_T::n_thresholds; k++) {
                if (a >= thresholds[c * CONFIG_T::n_thresholds + k])
                    n++;
            }
            out[p * CONFIG_T::n_chan + c] = codes[c * (CONFIG_T::n_thresholds + 1) + n];
        }
    }
}

struct upconcat_config {
    static const unsigned in_height = 1;
    static const unsigned in_width = 1;
    static const unsigned n_chan_up = 1;
    static const unsigned n_chan_skip = 1;
};

// Bilinear x2 (align_corners false, edge rows and columns repeated) of y times 16, then the skip
// codes times 16: out = [9 a + 3 b + 3 c + d, 16 skip] per output pixel, channels last.
template <class up_T, class skip_T, class res_T, typename CONFIG_T>
void upconcat(up_T y[CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan_up],
              skip_T skip[4 * CONFIG_T::in_height * CONFIG_T::in_width * CONFIG_T::n_chan_skip],
              res_T out[4 * CONFIG_T::in_height * CONFIG_T::in_width * (CONFIG_T::n_chan_up + CONFIG_T::n_chan_skip)]) {
    const int h = CONFIG_T::in_height, w = CONFIG_T::in_width;
    const unsigned cu = CONFIG_T::n_chan_up, cs = CONFIG_T::n_chan_skip, co = cu + cs;
Rows:
    for (int oy = 0; oy < 2 * h; oy++) {
        const int iy = oy / 2;
        int ny = (oy % 2 == 0) ? iy - 1 : iy + 1;
        ny = ny < 0 ? 0 : (ny > h - 1 ? h - 1 : ny);
    Cols:
        for (int ox = 0; ox < 2 * w; ox++) {
            const int ix = ox / 2;
            int nx = (ox % 2 == 0) ? ix - 1 : ix + 1;
            nx = nx < 0 ? 0 : (nx > w - 1 ? w - 1 : nx);
            const unsigned o = (oy * 2 * w + ox) * co;
        Up:
            for (unsigned c = 0; c < cu; c++) {
                res_T v = 9 * (res_T)y[(iy * w + ix) * cu + c];
                v += 3 * (res_T)y[(ny * w + ix) * cu + c];
                v += 3 * (res_T)y[(iy * w + nx) * cu + c];
                v += (res_T)y[(ny * w + nx) * cu + c];
                out[o + c] = v;
            }
        Skip:
            for (unsigned c = 0; c < cs; c++) {
                out[o + cu + c] = 16 * (res_T)skip[(oy * 2 * w + ox) * cs + c];
            }
        }
    }
}

} // namespace nnet

#endif
