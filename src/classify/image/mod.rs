//! Turns untrusted image bytes into the MobileNet input tensor.
//!
//! The reference pipeline (`fixtures/shared/golden.json`) is Pillow 13:
//! `Image.open(f).convert('RGB').resize((224, 224), NEAREST | BILINEAR)`, then
//! `x / 127.5 - 1`. Both resize filters are reimplemented here bit for bit, so
//! for losslessly stored images (BMP, PNG, ...) the tensor fed to the model is
//! the very one the golden probabilities were computed from. JPEGs differ
//! slightly because image's decoder (zune-jpeg) is not libjpeg-turbo.

use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use image::{
    ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
};

pub mod jpeg_scale;

/// The model input is `SIDE x SIDE x 3`.
pub const SIDE: usize = 224;

const OUT_LEN: usize = SIDE * SIDE * 3;

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

/// How [`preprocess_with`] turns image bytes into the model input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessOptions {
    pub filter: ResizeFilter,
    /// Decode JPEGs larger than `2 * SIDE` in both axes at reduced size in the
    /// IDCT before the resize: less work on large photos, but the pixels are no
    /// longer Pillow's. Off by default.
    pub jpeg_dct_scaling: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted, checked against the header before decoding.
    pub max_pixels: u64,
    /// Memory the decoder may allocate, the decoded image included.
    pub max_alloc_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("not a JPEG, PNG, GIF, BMP or WebP image ({0})")]
    Unsupported(String),
    #[error("image is {width}x{height} pixels, more than the {max} allowed")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("the image data is corrupt or truncated: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` to 8-bit RGB.
///
/// The format is sniffed from the content only, never from a URL or a
/// Content-Type. Only the first frame of an animated image is used. Colour
/// conversion follows Pillow's `.convert('RGB')`: grey is replicated, alpha is
/// dropped (not blended against a background), palettes are expanded. 16-bit
/// samples keep their high byte, as Pillow does for 16-bit RGB(A) PNGs (for
/// 16-bit grey Pillow clips to 255 instead, a quirk not worth copying). EXIF
/// orientation is ignored, as in the reference pipeline.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    decode_rgb8_with(bytes, limits, false)
}

/// [`decode_rgb8`], except that with `jpeg_dct_scaling` a JPEG larger than
/// `2 * SIDE` in both axes comes back decoded at 1/2, 1/4 or 1/8 scale (never
/// below `SIDE` on either side; see [`jpeg_scale`]). Same checks, same errors.
pub fn decode_rgb8_with(
    bytes: &[u8],
    limits: &DecodeLimits,
    jpeg_dct_scaling: bool,
) -> Result<RgbImage, PreprocessError> {
    let format = sniff_format(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PreprocessError::Corrupt(
            "the JPEG data ends before the end-of-image marker".to_owned(),
        ));
    }
    if format == ImageFormat::Jpeg && jpeg_dct_scaling {
        if let Some(scaled) = jpeg_scale::decode_scaled(bytes, limits)? {
            return Ok(scaled);
        }
    }
    // The decoders are third-party parsers fed with hostile input: should one of
    // them panic, the request fails rather than the worker running it.
    catch_unwind(AssertUnwindSafe(|| decode_as(bytes, format, limits))).unwrap_or_else(|_| {
        Err(PreprocessError::Corrupt(format!(
            "the {} decoder failed",
            format_name(format)
        )))
    })
}

fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::WebP),
        ) => Ok(format),
        Ok(other) => Err(PreprocessError::Unsupported(format!(
            "{} images are not accepted",
            format_name(other)
        ))),
        Err(_) if bytes.is_empty() => Err(PreprocessError::Unsupported("no data".to_owned())),
        Err(_) => Err(PreprocessError::Unsupported(
            "the content is not a recognised image format".to_owned(),
        )),
    }
}

/// zune-jpeg, in the lenient mode image runs it in, fills the missing part of
/// a truncated scan with grey instead of failing, where Pillow refuses the
/// file. A complete JPEG has an end-of-image marker after its last
/// start-of-scan; entropy-coded data cannot contain either (0xFF is stuffed).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: [u8; 2] = [0xff, 0xda];
    const EOI: [u8; 2] = [0xff, 0xd9];
    // Searching backwards finds the end-of-image marker at once in the usual case.
    bytes
        .windows(2)
        .rposition(|pair| pair == EOI)
        .is_some_and(|eoi| !bytes[eoi..].windows(2).any(|pair| pair == SOS))
}

fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Jpeg => "JPEG".to_owned(),
        ImageFormat::WebP => "WebP".to_owned(),
        other => format!("{other:?}").to_uppercase(),
    }
}

fn decode_as(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    // Building the decoder parses only the header, so both size checks below
    // happen before any pixel buffer exists.
    let decoder = reader.into_decoder().map_err(|e| corrupt(e, limits))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::Corrupt(format!(
            "the image is {width}x{height} pixels"
        )));
    }
    // The decoder counts only its own scratch buffers against the limit, so the
    // decoded image, and the RGB copy `into_rgb8` may make of it, are checked here.
    let rgb_copy = if decoder.color_type() == ColorType::Rgb8 {
        0
    } else {
        u64::from(width) * u64::from(height) * 3
    };
    if decoder.total_bytes().saturating_add(rgb_copy) > limits.max_alloc_bytes {
        return Err(alloc_limit_hit(limits));
    }
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e, limits))?;
    Ok(into_rgb8(decoded))
}

fn corrupt(error: ImageError, limits: &DecodeLimits) -> PreprocessError {
    match error {
        ImageError::Limits(_) => alloc_limit_hit(limits),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

pub(crate) fn alloc_limit_hit(limits: &DecodeLimits) -> PreprocessError {
    PreprocessError::Corrupt(format!(
        "decoding it would need more than the {} bytes of memory allowed",
        limits.max_alloc_bytes
    ))
}

/// Pillow's `.convert('RGB')` for everything the decoders produce. Done by hand
/// because `DynamicImage::into_rgb8` rounds 16-bit samples (`(v + 128) / 257`)
/// where Pillow truncates (`v >> 8`).
fn into_rgb8(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(img) => pack_rgb(w, h, img.as_raw(), 4, |v| v),
        DynamicImage::ImageLuma8(img) => pack_rgb(w, h, img.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(img) => pack_rgb(w, h, img.as_raw(), 2, |v| v),
        DynamicImage::ImageRgb16(img) => pack_rgb(w, h, img.as_raw(), 3, high_byte),
        DynamicImage::ImageRgba16(img) => pack_rgb(w, h, img.as_raw(), 4, high_byte),
        DynamicImage::ImageLuma16(img) => pack_rgb(w, h, img.as_raw(), 1, high_byte),
        DynamicImage::ImageLumaA16(img) => pack_rgb(w, h, img.as_raw(), 2, high_byte),
        // Float images only come from formats rejected by `sniff_format`.
        other => other.into_rgb8(),
    }
}

fn high_byte(v: u16) -> u8 {
    v.to_be_bytes()[0]
}

/// Grey (1-2 channels) is replicated, colour (3-4 channels) keeps RGB; a
/// trailing alpha channel is ignored.
pub(crate) fn pack_rgb<T: Copy>(
    width: u32,
    height: u32,
    samples: &[T],
    channels: usize,
    to_u8: impl Fn(T) -> u8,
) -> RgbImage {
    let mut rgb = RgbImage::new(width, height);
    let pixels = rgb.chunks_exact_mut(3).zip(samples.chunks_exact(channels));
    if channels < 3 {
        for (dst, src) in pixels {
            dst.fill(to_u8(src[0]));
        }
    } else {
        for (dst, src) in pixels {
            dst[0] = to_u8(src[0]);
            dst[1] = to_u8(src[1]);
            dst[2] = to_u8(src[2]);
        }
    }
    rgb
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

/// `x / 127.5 - 1` in f32, as the reference computes it with numpy float32.
///
/// # Panics
/// If the slices differ in length.
pub fn scale_into(rgb: &[u8], out: &mut [f32]) {
    assert_eq!(rgb.len(), out.len(), "scale_into needs equally long slices");
    for (o, &v) in out.iter_mut().zip(rgb) {
        *o = f32::from(v) / 127.5 - 1.0;
    }
}

/// Decodes, resizes and scales in one call; `out` receives `SIDE * SIDE * 3`
/// floats in HWC RGB order.
///
/// # Panics
/// If `out.len() != SIDE * SIDE * 3`.
pub fn preprocess(
    bytes: &[u8],
    limits: &DecodeLimits,
    filter: ResizeFilter,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    let options = PreprocessOptions {
        filter,
        ..PreprocessOptions::default()
    };
    preprocess_with(bytes, limits, &options, out)
}

/// [`preprocess`] with every option.
///
/// # Panics
/// If `out.len() != SIDE * SIDE * 3`.
pub fn preprocess_with(
    bytes: &[u8],
    limits: &DecodeLimits,
    options: &PreprocessOptions,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    assert_eq!(out.len(), OUT_LEN, "preprocess needs a SIDE*SIDE*3 buffer");
    let img = decode_rgb8_with(bytes, limits, options.jpeg_dct_scaling)?;
    let mut resized = vec![0; OUT_LEN];
    resize_into(&img, options.filter, &mut resized);
    scale_into(&resized, out);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::codecs::gif::GifEncoder;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::webp::WebPEncoder;
    use image::{
        Delay, Frame, GrayAlphaImage, GrayImage, ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, Rgba,
        RgbaImage,
    };
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/shared");
    pub(crate) const LIMITS: DecodeLimits = DecodeLimits {
        max_pixels: 50_000_000,
        max_alloc_bytes: 512 << 20,
    };

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(FIXTURES).join(rel)
    }

    pub(crate) fn read_fixture(rel: &str) -> Vec<u8> {
        std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    /// `(name, entry)` of every golden image stored in `format`.
    pub(crate) fn golden_images(format: &str) -> Vec<(String, serde_json::Value)> {
        let golden: serde_json::Value =
            serde_json::from_slice(&read_fixture("golden.json")).unwrap();
        let images: Vec<_> = golden["images"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, entry)| entry["format"] == format)
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        assert!(!images.is_empty(), "no {format} image in golden.json");
        images
    }

    pub(crate) const FILTERS: [(&str, ResizeFilter); 2] = [
        ("pil_nearest", ResizeFilter::Nearest),
        ("pil_bilinear", ResizeFilter::Bilinear),
    ];

    fn sha256_hex(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    pub(crate) fn resized(img: &RgbImage, filter: ResizeFilter) -> Vec<u8> {
        let mut out = vec![0; OUT_LEN];
        resize_into(img, filter, &mut out);
        out
    }

    pub(crate) fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        img.into().write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// Deterministic noise, reproducible in Python to get Pillow's results.
    pub(crate) fn lcg_image(width: u32, height: u32) -> RgbImage {
        let mut state = u64::from(width) * 1_000_003 + u64::from(height);
        let data = (0..width as usize * height as usize * 3)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect();
        RgbImage::from_raw(width, height, data).unwrap()
    }

    #[test]
    fn bmp_fixtures_match_pillow_bit_for_bit() {
        let mut mismatches = Vec::new();
        for (name, entry) in golden_images("BMP") {
            let img = decode_rgb8(&read_fixture(entry["file"].as_str().unwrap()), &LIMITS)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (key, filter) in FILTERS {
                if sha256_hex(&resized(&img, filter)) != entry[key]["input_sha256"] {
                    mismatches.push(format!("{name} {filter}"));
                }
            }
        }
        assert!(mismatches.is_empty(), "differ from Pillow: {mismatches:?}");
    }

    /// zune-jpeg and libjpeg-turbo round the IDCT and chroma upsampling
    /// differently. Measured on the 7 JPEG fixtures: nearest max 4 / mean
    /// <= 0.16, bilinear max 2 / mean <= 0.15 (per-image mean abs difference per
    /// byte; the 720p/1080p cats are the worst, the others are around 0.01).
    #[test]
    fn jpeg_fixtures_are_close_to_pillow() {
        for (name, entry) in golden_images("JPEG") {
            let img = decode_rgb8(&read_fixture(entry["file"].as_str().unwrap()), &LIMITS)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for ((key, filter), max_allowed) in FILTERS.into_iter().zip([5, 3]) {
                let want = read_fixture(entry[key]["input_file"].as_str().unwrap());
                let got = resized(&img, filter);
                let diffs: Vec<u8> = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).collect();
                let max = diffs.iter().copied().max().unwrap();
                let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
                assert!(
                    max <= max_allowed && mean <= 0.2,
                    "{name} {filter}: max {max}, mean {mean:.4}"
                );
            }
        }
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

    #[test]
    fn preprocess_feeds_the_golden_tensor() {
        let (name, entry) = golden_images("BMP").remove(0);
        let want_rgb = read_fixture(entry["pil_bilinear"]["input_file"].as_str().unwrap());
        let mut want = vec![0.0; OUT_LEN];
        scale_into(&want_rgb, &mut want);
        let mut got = vec![f32::NAN; OUT_LEN];
        let bytes = read_fixture(entry["file"].as_str().unwrap());
        preprocess(&bytes, &LIMITS, ResizeFilter::Bilinear, &mut got).unwrap();
        assert!(got == want, "{name}");
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

    fn assert_unsupported(bytes: &[u8]) {
        let result = decode_rgb8(bytes, &LIMITS);
        assert!(
            matches!(result, Err(PreprocessError::Unsupported(_))),
            "{:?}: {result:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        );
    }

    fn assert_corrupt(bytes: &[u8], what: &str) {
        let result = decode_rgb8(bytes, &LIMITS);
        assert!(
            matches!(result, Err(PreprocessError::Corrupt(_))),
            "{what}: {result:?}"
        );
    }

    #[test]
    fn unrecognised_content_is_unsupported() {
        assert_unsupported(b"");
        assert_unsupported(b"<!DOCTYPE html><html><body>Not found</body></html>\n");
        assert_unsupported(b"GIF8");
        assert_unsupported(b"II*\0\x08\0\0\0 a TIFF header");
        let noise: Vec<u8> = lcg_image(64, 64).into_raw();
        assert_unsupported(&noise);
    }

    #[test]
    fn truncated_or_damaged_images_are_corrupt() {
        let img = lcg_image(40, 30);
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ] {
            let bytes = encode(img.clone(), format);
            for keep in [bytes.len() / 2, 40, 20] {
                assert_corrupt(&bytes[..keep], &format!("{format:?} cut to {keep} bytes"));
            }
        }
        let mut png = encode(img, ImageFormat::Png);
        let last = png.len() - 20;
        png[last] ^= 0xff;
        assert_corrupt(&png, "PNG with a damaged checksum");
    }

    /// Rewrites the IHDR size of a PNG, fixing up the chunk CRC so that only
    /// the size is wrong.
    fn png_claiming(mut png: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        !data.iter().fold(!0u32, |crc, &byte| {
            (0..8).fold(crc ^ u32::from(byte), |c, _| {
                if c & 1 == 1 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                }
            })
        })
    }

    /// Rewrites the frame size in a baseline JPEG's SOF0 segment.
    pub(crate) fn jpeg_claiming(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn oversized_headers_are_rejected_before_decoding() {
        let small = lcg_image(8, 8);
        let png = png_claiming(encode(small.clone(), ImageFormat::Png), 100_000, 100_000);
        let jpeg = jpeg_claiming(encode(small.clone(), ImageFormat::Jpeg), 60_000, 60_000);
        let mut gif = encode(small, ImageFormat::Gif);
        gif[6..10].copy_from_slice(&[0xff; 4]);
        for (bytes, width, height) in [
            (png, 100_000, 100_000),
            (jpeg, 60_000, 60_000),
            (gif, 65_535, 65_535),
        ] {
            match decode_rgb8(&bytes, &LIMITS) {
                Err(PreprocessError::TooManyPixels {
                    width: w,
                    height: h,
                    max,
                }) => {
                    assert_eq!((w, h, max), (width, height, LIMITS.max_pixels));
                }
                other => panic!("{width}x{height}: {other:?}"),
            }
        }
    }

    #[test]
    fn allocation_limit_is_enforced() {
        let png = encode(lcg_image(100, 100), ImageFormat::Png);
        let limits = DecodeLimits {
            max_pixels: 1 << 20,
            max_alloc_bytes: 10_000,
        };
        let result = decode_rgb8(&png, &limits);
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("10000 bytes")),
            "{result:?}"
        );
    }

    #[test]
    fn error_messages_explain_the_problem() {
        let too_big = PreprocessError::TooManyPixels {
            width: 20_000,
            height: 20_000,
            max: 50_000_000,
        };
        assert_eq!(
            too_big.to_string(),
            "image is 20000x20000 pixels, more than the 50000000 allowed"
        );
        let tiff = decode_rgb8(b"MM\0*\0\0\0\x08", &LIMITS).unwrap_err();
        assert_eq!(
            tiff.to_string(),
            "not a JPEG, PNG, GIF, BMP or WebP image (TIFF images are not accepted)"
        );
        let cut = encode(lcg_image(16, 16), ImageFormat::Png);
        let message = decode_rgb8(&cut[..cut.len() / 2], &LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("the image data is corrupt or truncated: "),
            "{message}"
        );
    }

    fn decode_ok(bytes: &[u8]) -> RgbImage {
        decode_rgb8(bytes, &LIMITS).unwrap()
    }

    #[test]
    fn png_colour_types_become_rgb8() {
        let rgb = RgbImage::from_fn(3, 2, |x, y| Rgb([x as u8, y as u8, 200]));
        assert_eq!(decode_ok(&encode(rgb.clone(), ImageFormat::Png)), rgb);

        let rgba = RgbaImage::from_fn(2, 2, |x, y| Rgba([10, 20 + x as u8, 30 + y as u8, 0]));
        let want = RgbImage::from_fn(2, 2, |x, y| Rgb([10, 20 + x as u8, 30 + y as u8]));
        assert_eq!(decode_ok(&encode(rgba, ImageFormat::Png)), want);

        let grey = GrayImage::from_fn(2, 2, |x, y| Luma([(x * 100 + y) as u8]));
        let want = RgbImage::from_fn(2, 2, |x, y| Rgb([(x * 100 + y) as u8; 3]));
        assert_eq!(decode_ok(&encode(grey, ImageFormat::Png)), want);

        let grey_alpha = GrayAlphaImage::from_pixel(2, 1, LumaA([77, 3]));
        let want = RgbImage::from_pixel(2, 1, Rgb([77; 3]));
        assert_eq!(decode_ok(&encode(grey_alpha, ImageFormat::Png)), want);

        // 0x12ff would round to 0x13; Pillow keeps the high byte.
        let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> =
            ImageBuffer::from_pixel(2, 2, Rgb([0x12ff, 0xffff, 0x0080]));
        let want = RgbImage::from_pixel(2, 2, Rgb([0x12, 0xff, 0x00]));
        assert_eq!(decode_ok(&encode(rgb16, ImageFormat::Png)), want);

        let rgba16: ImageBuffer<Rgba<u16>, Vec<u16>> =
            ImageBuffer::from_pixel(1, 1, Rgba([0xab00, 0x0100, 0x7fff, 0]));
        let want = RgbImage::from_pixel(1, 1, Rgb([0xab, 0x01, 0x7f]));
        assert_eq!(decode_ok(&encode(rgba16, ImageFormat::Png)), want);

        let grey16: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_pixel(1, 2, Luma([0x80ff]));
        let want = RgbImage::from_pixel(1, 2, Rgb([0x80; 3]));
        assert_eq!(decode_ok(&encode(grey16, ImageFormat::Png)), want);
    }

    #[test]
    fn gif_uses_the_first_frame() {
        let frame = |colour| {
            let img = RgbaImage::from_pixel(4, 3, Rgba(colour));
            Frame::from_parts(img, 0, 0, Delay::from_numer_denom_ms(100, 1))
        };
        let mut gif = Vec::new();
        GifEncoder::new(&mut gif)
            .encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])
            .unwrap();
        assert_eq!(
            decode_ok(&gif),
            RgbImage::from_pixel(4, 3, Rgb([255, 0, 0]))
        );
    }

    #[test]
    fn webp_bmp_and_jpeg_decode() {
        let rgba = RgbaImage::from_fn(5, 4, |x, y| Rgba([x as u8 * 40, y as u8 * 60, 7, 128]));
        let want = RgbImage::from_fn(5, 4, |x, y| Rgb([x as u8 * 40, y as u8 * 60, 7]));
        let mut webp = Vec::new();
        WebPEncoder::new_lossless(&mut webp)
            .write_image(rgba.as_raw(), 5, 4, image::ExtendedColorType::Rgba8)
            .unwrap();
        assert_eq!(decode_ok(&webp), want);

        let rgb = lcg_image(7, 5);
        assert_eq!(decode_ok(&encode(rgb, ImageFormat::Bmp)), lcg_image(7, 5));

        // A flat grey JPEG survives compression exactly and comes back replicated.
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(&[90; 16 * 16], 16, 16, image::ExtendedColorType::L8)
            .unwrap();
        assert_eq!(decode_ok(&jpeg), RgbImage::from_pixel(16, 16, Rgb([90; 3])));
    }

    #[test]
    fn scale_maps_bytes_to_minus_one_one() {
        let mut out = [0.0; 4];
        scale_into(&[0, 127, 128, 255], &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 1.0);
        assert!(out[1] < 0.0 && out[1] > -0.004, "{}", out[1]);
        assert!(out[2] > 0.0 && out[2] < 0.004, "{}", out[2]);
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
