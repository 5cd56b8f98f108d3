//! Pillow 13's `resize((224, 224), NEAREST | BILINEAR)` on 8-bit RGB, reimplemented bit for bit.
use std::fmt;
use std::str::FromStr;

use image::RgbImage;

/// The model input is `SIDE x SIDE x 3`.
pub const SIDE: usize = 224;

/// Bytes of a resized image, floats of the model input.
pub(super) const OUT_LEN: usize = SIDE * SIDE * 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeFilter {
    /// Pillow's `Image.NEAREST`, what `keras.preprocessing.image.load_img` uses.
    #[default]
    Nearest,
    /// Pillow's `Image.BILINEAR`, which is antialiased when downscaling.
    Bilinear,
}

impl ResizeFilter {
    fn as_str(self) -> &'static str {
        match self {
            ResizeFilter::Nearest => "nearest",
            ResizeFilter::Bilinear => "bilinear",
        }
    }
}

impl fmt::Display for ResizeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resize filter {0:?}, expected \"nearest\" or \"bilinear\"")]
pub struct ParseResizeFilterError(String);

impl FromStr for ResizeFilter {
    type Err = ParseResizeFilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("nearest") {
            Ok(ResizeFilter::Nearest)
        } else if s.eq_ignore_ascii_case("bilinear") {
            Ok(ResizeFilter::Bilinear)
        } else {
            Err(ParseResizeFilterError(s.to_owned()))
        }
    }
}

/// Resizes to `SIDE x SIDE` (aspect ratio not kept, no crop) into `out` as
/// row-major HWC RGB, reproducing Pillow 13's `resize((224, 224), filter)`
/// bit for bit. An image without pixels gives an all-black result.
///
/// # Panics
/// If `out.len() != SIDE * SIDE * 3`.
pub fn resize_into(img: &RgbImage, filter: ResizeFilter, out: &mut [u8]) {
    assert_eq!(out.len(), OUT_LEN, "resize_into needs a SIDE*SIDE*3 buffer");
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        out.fill(0);
        return;
    }
    // An `ImageBuffer` may sit on a longer buffer than its pixels need.
    let src = &img.as_raw()[..width * height * 3];
    match filter {
        ResizeFilter::Nearest => resize_nearest(src, width, height, out),
        ResizeFilter::Bilinear => resize_bilinear(src, width, height, out),
    }
}

/// Pillow passes the resize box to C as `float`, so the input size goes
/// through f32 before the f64 arithmetic (exact below 2^24 pixels).
fn pillow_box_edge(in_size: usize) -> f64 {
    f64::from(in_size as f32)
}

/// Pillow's `ImagingScaleAffine`: the source coordinate is accumulated in f64
/// from half a step and truncated, which is not always the same as truncating
/// `(i + 0.5) * step`.
fn nearest_indices(in_size: usize) -> [usize; SIDE] {
    let step = pillow_box_edge(in_size) / SIDE as f64;
    let mut pos = step * 0.5;
    let mut indices = [0; SIDE];
    for index in &mut indices {
        *index = (pos as usize).min(in_size - 1);
        pos += step;
    }
    indices
}

fn resize_nearest(src: &[u8], width: usize, height: usize, out: &mut [u8]) {
    let xs = nearest_indices(width).map(|x| x * 3);
    let ys = nearest_indices(height);
    for (out_row, &y) in out.chunks_exact_mut(SIDE * 3).zip(&ys) {
        let src_row = &src[y * width * 3..(y + 1) * width * 3];
        for (dst, &x) in out_row.chunks_exact_mut(3).zip(&xs) {
            dst.copy_from_slice(&src_row[x..x + 3]);
        }
    }
}

/// Pillow's fixed point for 8-bit resampling: `PRECISION_BITS = 32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;
/// Pillow starts every sum at one half, so the final shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the BILINEAR
/// filter (a triangle of support 1), from `in_size` samples to `SIDE`.
struct Kernel {
    /// Row length of `weights`.
    ksize: usize,
    /// First source index and number of taps of each output sample.
    bounds: [(usize, usize); SIDE],
    weights: Vec<i32>,
}

impl Kernel {
    fn bilinear(in_size: usize) -> Self {
        let scale = pillow_box_edge(in_size) / SIDE as f64;
        // When downscaling the triangle widens with the scale: that is the antialiasing.
        let filterscale = scale.max(1.0);
        let support = filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut bounds = [(0, 0); SIDE];
        let mut weights = vec![0; SIDE * ksize];
        let mut taps = vec![0.0; ksize];
        for (xx, (row, bound)) in weights.chunks_exact_mut(ksize).zip(&mut bounds).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // `as` truncates toward zero, like C's `(int)`.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = &mut taps[..xmax.saturating_sub(xmin).min(ksize)];
            let mut sum = 0.0;
            for (x, tap) in taps.iter_mut().enumerate() {
                *tap = triangle(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                sum += *tap;
            }
            for (weight, &tap) in row.iter_mut().zip(taps.iter()) {
                let tap = if sum != 0.0 { tap / sum } else { tap };
                // The triangle is never negative, so only Pillow's `>= 0` rounding applies.
                *weight = (0.5 + tap * f64::from(1 << PRECISION_BITS)) as i32;
            }
            *bound = (xmin, taps.len());
        }
        Kernel {
            ksize,
            bounds,
            weights,
        }
    }

    /// First source index and weights of output sample `index`.
    fn taps(&self, index: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[index];
        (start, &self.weights[index * self.ksize..][..len])
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `ImagingResampleInner`: two separable passes, each rounded to u8,
/// so their order matters. A pass whose axis already has `SIDE` samples is
/// skipped. Pillow 13, the reference, runs the vertical pass first when the
/// height shrinks by more than twice as many pixels as the width; otherwise the
/// horizontal pass goes first, over just the source rows the vertical pass
/// will read.
fn resize_bilinear(src: &[u8], width: usize, height: usize, out: &mut [u8]) {
    let shrink = |size: usize| size as i64 - SIDE as i64;
    let vertical_first = shrink(height) > 0 && shrink(height) > 2 * shrink(width);
    match (width != SIDE, height != SIDE) {
        (false, false) => out.copy_from_slice(src),
        (true, false) => horizontal_pass(src, width, &Kernel::bilinear(width), out),
        (false, true) => vertical_pass(src, SIDE * 3, 0, &Kernel::bilinear(height), out),
        (true, true) if vertical_first => {
            let mut tmp = vec![0; SIDE * width * 3];
            vertical_pass(src, width * 3, 0, &Kernel::bilinear(height), &mut tmp);
            horizontal_pass(&tmp, width, &Kernel::bilinear(width), out);
        }
        (true, true) => {
            let vertical = Kernel::bilinear(height);
            let first = vertical.bounds[0].0;
            let (last_start, last_len) = vertical.bounds[SIDE - 1];
            let rows = &src[first * width * 3..(last_start + last_len) * width * 3];
            let mut tmp = vec![0; rows.len() / width * SIDE * 3];
            horizontal_pass(rows, width, &Kernel::bilinear(width), &mut tmp);
            vertical_pass(&tmp, SIDE * 3, first, &vertical, out);
        }
    }
}

// The sums below use wrapping arithmetic: Pillow's true sum always fits in an
// i32, but the split partial sums of `vertical_columns` may not for absurd tap
// counts, and a debug build must not panic on those either.

/// Resamples every row of `src` (rows of `width` RGB pixels) to `SIDE` pixels.
fn horizontal_pass(src: &[u8], width: usize, kernel: &Kernel, dst: &mut [u8]) {
    for (src_row, dst_row) in src
        .chunks_exact(width * 3)
        .zip(dst.chunks_exact_mut(SIDE * 3))
    {
        for (xx, px) in dst_row.chunks_exact_mut(3).enumerate() {
            let (start, weights) = kernel.taps(xx);
            let window = &src_row[start * 3..(start + weights.len()) * 3];
            let mut acc = [HALF; 3];
            for (s, &w) in window.chunks_exact(3).zip(weights) {
                acc[0] = acc[0].wrapping_add(i32::from(s[0]) * w);
                acc[1] = acc[1].wrapping_add(i32::from(s[1]) * w);
                acc[2] = acc[2].wrapping_add(i32::from(s[2]) * w);
            }
            px[0] = clip8(acc[0]);
            px[1] = clip8(acc[1]);
            px[2] = clip8(acc[2]);
        }
    }
}

/// Resamples `src` (rows of `row_len` bytes, the first being source row
/// `first_row`) vertically to `SIDE` rows.
fn vertical_pass(src: &[u8], row_len: usize, first_row: usize, kernel: &Kernel, dst: &mut [u8]) {
    for (yy, dst_row) in dst.chunks_exact_mut(row_len).enumerate() {
        let (start, weights) = kernel.taps(yy);
        let rows = &src[(start - first_row) * row_len..][..weights.len() * row_len];
        for (i, out) in dst_row.chunks_mut(COLUMNS).enumerate() {
            vertical_columns(rows, row_len, i * COLUMNS, weights, out);
        }
    }
}

/// Bytes per block of the vertical pass: enough to keep the vector units busy,
/// few enough for the accumulators to stay in registers.
const COLUMNS: usize = 32;

/// One block of `out.len() <= COLUMNS` output bytes of the vertical pass.
///
/// Each weight is split as `hi << 11 | lo` with both halves below 2^15: baseline
/// x86_64 (SSE2) has no vector 32-bit multiply, but LLVM turns products of
/// such small factors into `pmaddwd`, which makes this pass ~25% faster. The
/// recombined sums are exactly Pillow's.
fn vertical_columns(rows: &[u8], row_len: usize, column: usize, weights: &[i32], out: &mut [u8]) {
    const SPLIT: u32 = 11;
    let mut hi = [0i32; COLUMNS];
    let mut lo = [0i32; COLUMNS];
    for (row, &w) in rows.chunks_exact(row_len).zip(weights) {
        let (w_hi, w_lo) = ((w >> SPLIT) & 0xfff, w & ((1 << SPLIT) - 1));
        let px = &row[column..column + out.len()];
        for ((h, l), &p) in hi.iter_mut().zip(&mut lo).zip(px) {
            *h = h.wrapping_add(i32::from(p) * w_hi);
            *l = l.wrapping_add(i32::from(p) * w_lo);
        }
    }
    for ((o, &h), &l) in out.iter_mut().zip(&hi).zip(&lo) {
        *o = clip8((h << SPLIT).wrapping_add(l).wrapping_add(HALF));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::test_support::{
        decode_plain, golden_images, lcg_image, read_fixture, resized, sha256_hex, FILTERS, LIMITS,
    };
    use image::Rgb;

    /// Every golden photo, BMP and JPEG, with both filters: the 224x224 buffer is the one
    /// Pillow made (JPEGs through libjpeg-turbo, as Pillow decodes them).
    #[test]
    fn golden_photos_match_pillow_bit_for_bit() {
        let (mut mismatches, mut compared) = (Vec::new(), 0);
        for format in ["BMP", "JPEG"] {
            for (name, entry) in golden_images(format) {
                let img = decode_plain(&read_fixture(entry["file"].as_str().unwrap()), &LIMITS)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                for (key, filter) in FILTERS {
                    compared += 1;
                    if sha256_hex(&resized(&img, filter)) != entry[key]["input_sha256"] {
                        mismatches.push(format!("{name} {filter}"));
                    }
                }
            }
        }
        assert!(mismatches.is_empty(), "differ from Pillow: {mismatches:?}");
        assert_eq!(compared, 42, "21 photos (14 BMP, 7 JPEG) x 2 filters");
    }

    /// sha256 of Pillow 13.0.0's `Image.frombytes("RGB", (w, h), data).resize(
    /// (224, 224), NEAREST | BILINEAR)` for `data` = `lcg_image(w, h)` (same LCG
    /// in Python), covering upscaling, single-axis and identity resizes and both
    /// pass orders of BILINEAR, which the photo fixtures do not.
    #[rustfmt::skip]
    const PILLOW_SYNTHETIC: [(u32, u32, &str, &str); 14] = [
        (1, 1, "ea0229ef3658603ded3fb45680fa4ce44adbff800811ba7276f2722194986e8e", "ea0229ef3658603ded3fb45680fa4ce44adbff800811ba7276f2722194986e8e"),
        (3, 5, "544c414cae4f82d7b11bd8bda013e16d90e7e4a87395050b8164b5ab477d238d", "de147d7eefe4b8039d202813b64a9483d42b760dd4bea26311d23fb03e9650ce"),
        (224, 224, "a72ddfb1ce1ea09e8659a0cb90f13ddbeca1ca172924fc65285dbb5ad55d757b", "a72ddfb1ce1ea09e8659a0cb90f13ddbeca1ca172924fc65285dbb5ad55d757b"),
        (224, 100, "6acb908a242d47fb873a04b93b2080f67a81bc9fc94ef18ca09daabddb89b412", "8a052a92b86c9b04f1f7496e12833216dacff82a2dac32647f71b45ad9606b1c"),
        (100, 224, "7b0920a3fe604e7ce87d6127835f44b626044e7930e09d9ce5c7e7a1f4d9575d", "f8fd496dd2f6784589bf571cf161ceafdb59ed62792882dbf88f1e9e2ab956e1"),
        (224, 300, "7a72a7171812c045a88d0d6bdeb37068635969cd9f2ded0c79dde04e9cd47107", "e2b660c546aab209fb9faef8ee7f49f86f2c1dd5438ca49b58f74f4c03203f75"),
        (225, 223, "85141534c3ee7b6a26cf2fbea5e8f19b42cf242a21570249c86afb4a88c1f79f", "c9fae365f0fe420a823e817beb78c3b0464b82a6ec8021106f44f2f9a946dd97"),
        (223, 225, "6323b5147e988bab8e5caccd4d0b14eb82ebb91d1c8cbffd45c0d50ef62b3d9e", "d410fd83e0c2893e0efa417d363e49097ffed7b14a69583cca554b415bd1c7e2"),
        (7, 300, "fdea837049a92fdfd539bdf72d56f65bdde1923b225bf69f80b452e6d8b53e17", "1fdf867e8da44601fc0d0c7581a0ed3f79bb2c662232cdbb9e1f70a41eb90af4"),
        (37, 500, "025082c51d1a409ebfe781cc461bd1a459b215a04c345f4e5a183064bcc4be51", "7e0259724db02af117e5de6d14b694b2b39f9871bf839f028039a8038e57c83b"),
        (500, 37, "e423de25ebe2efdf26ec7873468baff4de3c6456d7b9c5dc544873d6f93957f1", "67f6452fa5b982c7361c9c5d1c4688a73f12e5beb09e319f192d0f67fc48a1ab"),
        (448, 448, "342e3ce19f8c70e9a709e76d4d7956b96594b5e6ebf70bbfcb32035657950a42", "08e6536f0e0ad6299c2bda427d536c6bdba6299a146c0c8b101aa0d7a7b9dfce"),
        (1500, 40, "7dc38a951f5766cdd8a48b9eb74f4405959d29631c8d7eba1497c712b936b121", "776d61367223139047cccd7f613f6031072c139358446d3b7b80987f627b4af1"),
        (230, 2000, "b50d4e9244a128591b38233b0b97c81b9b700d465689556392f54bb011e3e511", "a874729455c3c27839d09f66f76e24e4f3aaf49956873cf48261c452c27011f5"),
    ];

    #[test]
    fn synthetic_images_match_pillow_bit_for_bit() {
        for (width, height, nearest, bilinear) in PILLOW_SYNTHETIC {
            let img = lcg_image(width, height);
            let got = sha256_hex(&resized(&img, ResizeFilter::Nearest));
            assert_eq!(got, nearest, "{width}x{height} nearest");
            let got = sha256_hex(&resized(&img, ResizeFilter::Bilinear));
            assert_eq!(got, bilinear, "{width}x{height} bilinear");
        }
    }

    /// Extreme aspect ratios, empty images and a buffer longer than the image
    /// needs (which `ImageBuffer` allows) must neither panic nor blur a flat colour.
    #[test]
    fn flat_images_stay_flat_at_any_size() {
        for (w, h) in [
            (0, 0),
            (0, 5),
            (5, 0),
            (1, 1),
            (2, 2),
            (224, 224),
            (3000, 1),
            (1, 500_000),
        ] {
            let mut raw = RgbImage::from_pixel(w, h, Rgb([9, 99, 199])).into_raw();
            raw.extend_from_slice(&[1, 2, 3]);
            let img = RgbImage::from_raw(w, h, raw).unwrap();
            for filter in [ResizeFilter::Nearest, ResizeFilter::Bilinear] {
                let out = resized(&img, filter);
                let want: &[u8] = if w * h == 0 {
                    &[0, 0, 0]
                } else {
                    &[9, 99, 199]
                };
                assert!(out.chunks(3).all(|px| px == want), "{w}x{h} {filter}");
            }
        }
    }

    #[test]
    fn filter_names_round_trip() {
        for filter in [ResizeFilter::Nearest, ResizeFilter::Bilinear] {
            assert_eq!(filter.to_string().parse::<ResizeFilter>(), Ok(filter));
        }
        assert_eq!("BiLinear".parse(), Ok(ResizeFilter::Bilinear));
        assert_eq!("NEAREST".parse(), Ok(ResizeFilter::Nearest));
        assert!("bicubic".parse::<ResizeFilter>().is_err());
        assert_eq!(ResizeFilter::default(), ResizeFilter::Nearest);
    }
}
