//! Turns untrusted image bytes into the MobileNet input tensor.
//!
//! The reference pipeline (see `fixtures/shared/golden.json`) is Pillow:
//! `Image.open(f).convert('RGB').resize((224, 224), NEAREST | BILINEAR)`, then
//! `x / 127.5 - 1`. Both resize filters are reimplemented here bit for bit, so
//! that for losslessly stored images (BMP, PNG, ...) the tensor fed to the model
//! is identical to the one the golden probabilities were computed from.

use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

/// The model input is `SIDE x SIDE x 3`.
pub const SIDE: usize = 224;

const OUT_LEN: usize = SIDE * SIDE * 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeFilter {
    /// Pillow's `Image.NEAREST`, the default of `keras.preprocessing.image.load_img`.
    #[default]
    Nearest,
    /// Pillow's `Image.BILINEAR` (antialiased when downscaling).
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

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `width * height` accepted, checked against the header before decoding.
    pub max_pixels: u64,
    /// Upper bound for the memory the decoder may allocate, decoded image included.
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
/// Content-Type. Only the first frame of an animated GIF is used. Colour
/// conversion follows Pillow's `.convert('RGB')`: grey is replicated, alpha is
/// dropped (not blended against a background) and palettes are expanded.
/// 16-bit samples keep their high byte, as Pillow does for 16-bit RGB(A) PNGs;
/// for 16-bit grey Pillow clips to 255 instead, which is a Pillow quirk not
/// worth copying. EXIF orientation is ignored, as in the reference pipeline.
pub fn decode_rgb8(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    let format = sniff_format(bytes)?;
    // The decoders are third-party parsers fed with hostile input: should one of
    // them panic, the request fails instead of the worker that runs it.
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

fn format_name(format: ImageFormat) -> &'static str {
    format
        .extensions_str()
        .first()
        .map_or("unknown", |ext| match *ext {
            "jpg" => "JPEG",
            "png" => "PNG",
            "gif" => "GIF",
            "bmp" => "BMP",
            "webp" => "WebP",
            "tif" | "tiff" => "TIFF",
            other => other,
        })
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
    // Building the decoder parses only the header, so the size checks below
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
    // Decoders only count their own scratch buffers against `max_alloc`, not
    // the output buffer, so that one is checked here.
    if decoder.total_bytes() > limits.max_alloc_bytes {
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

fn alloc_limit_hit(limits: &DecodeLimits) -> PreprocessError {
    PreprocessError::Corrupt(format!(
        "decoding it would need more than the {} bytes of memory allowed",
        limits.max_alloc_bytes
    ))
}

/// Pillow's `.convert('RGB')` for everything our decoders produce; done by hand
/// rather than with `DynamicImage::into_rgb8` because that one rounds 16-bit
/// samples (`(v + 128) / 257`) where Pillow truncates (`v >> 8`).
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
        // Float images only come from HDR/EXR, which are rejected earlier.
        other => other.into_rgb8(),
    }
}

fn high_byte(v: u16) -> u8 {
    v.to_be_bytes()[0]
}

/// Grey (1-2 channels) is replicated, colour (3-4 channels) keeps RGB; any
/// alpha channel is ignored.
fn pack_rgb<T: Copy>(
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
/// row-major HWC RGB, reproducing Pillow's `resize((224, 224), filter)` exactly.
/// An image without pixels gives an all-black result.
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
    match filter {
        ResizeFilter::Nearest => resize_nearest(img.as_raw(), width, height, out),
        ResizeFilter::Bilinear => resize_bilinear(img.as_raw(), width, height, out),
    }
}

/// Pillow's `ImagingScaleAffine`: the source coordinate is accumulated in f64
/// starting from half a step and truncated, which is not the same as computing
/// `(i + 0.5) * step` for every `i`.
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

/// Pillow passes the resize box to C as `float`, so the input size goes
/// through f32 before the f64 arithmetic (a no-op below 2^24 pixels).
fn pillow_box_edge(in_size: usize) -> f64 {
    f64::from(in_size as f32)
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

/// Pillow's fixed-point format for 8-bit resampling: `PRECISION_BITS = 32 - 8 - 2`.
const PRECISION_BITS: u32 = 22;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the BILINEAR
/// (triangle, support 1) filter, from `in_size` samples to `SIDE`.
struct Kernel {
    /// Taps per output sample; the rows of `weights` are this long.
    ksize: usize,
    /// First source index and number of taps of each output sample.
    bounds: [(usize, usize); SIDE],
    weights: Vec<i32>,
}

impl Kernel {
    fn bilinear(in_size: usize) -> Self {
        let scale = pillow_box_edge(in_size) / SIDE as f64;
        // Downscaling widens the triangle, which is what antialiases.
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
                // The triangle is never negative, so only Pillow's `>= 0` rounding branch applies.
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

/// Pillow's `ImagingResampleInner`: a horizontal pass over just the source rows
/// the vertical pass will read, rounded to u8, then the vertical pass. Passes
/// whose axis already has `SIDE` samples are skipped, as Pillow does.
fn resize_bilinear(src: &[u8], width: usize, height: usize, out: &mut [u8]) {
    match (width != SIDE, height != SIDE) {
        (false, false) => out.copy_from_slice(src),
        (true, false) => horizontal_pass(src, width, &Kernel::bilinear(width), out),
        (false, true) => vertical_pass(src, 0, &Kernel::bilinear(height), out),
        (true, true) => {
            let vertical = Kernel::bilinear(height);
            let first = vertical.bounds[0].0;
            let (last_start, last_len) = vertical.bounds[SIDE - 1];
            let rows = &src[first * width * 3..(last_start + last_len) * width * 3];
            let mut tmp = vec![0; rows.len() / width * SIDE * 3];
            horizontal_pass(rows, width, &Kernel::bilinear(width), &mut tmp);
            vertical_pass(&tmp, first, &vertical, out);
        }
    }
}

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
                acc[0] += i32::from(s[0]) * w;
                acc[1] += i32::from(s[1]) * w;
                acc[2] += i32::from(s[2]) * w;
            }
            px[0] = clip8(acc[0]);
            px[1] = clip8(acc[1]);
            px[2] = clip8(acc[2]);
        }
    }
}

/// Resamples `src` (rows of `SIDE` RGB pixels, starting at source row
/// `first_row`) vertically to `SIDE` rows.
fn vertical_pass(src: &[u8], first_row: usize, kernel: &Kernel, dst: &mut [u8]) {
    const ROW: usize = SIDE * 3;
    let mut acc = [0i32; ROW];
    for (yy, dst_row) in dst.chunks_exact_mut(ROW).enumerate() {
        let (start, weights) = kernel.taps(yy);
        let rows = &src[(start - first_row) * ROW..][..weights.len() * ROW];
        acc.fill(HALF);
        for (src_row, &w) in rows.chunks_exact(ROW).zip(weights) {
            for (a, &s) in acc.iter_mut().zip(src_row) {
                *a += i32::from(s) * w;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
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
    assert_eq!(out.len(), OUT_LEN, "preprocess needs a SIDE*SIDE*3 buffer");
    let img = decode_rgb8(bytes, limits)?;
    let mut resized = vec![0; OUT_LEN];
    resize_into(&img, filter, &mut resized);
    scale_into(&resized, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/shared");
    const LIMITS: DecodeLimits = DecodeLimits {
        max_pixels: 50_000_000,
        max_alloc_bytes: 512 << 20,
    };

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(FIXTURES).join(rel)
    }

    fn golden() -> serde_json::Value {
        let text = std::fs::read_to_string(fixture("golden.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn sha256_hex(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    fn resized(img: &RgbImage, filter: ResizeFilter) -> Vec<u8> {
        let mut out = vec![0; OUT_LEN];
        resize_into(img, filter, &mut out);
        out
    }

    #[test]
    fn explore() {
        let golden = golden();
        for (name, entry) in golden["images"].as_object().unwrap() {
            let bytes = std::fs::read(fixture(entry["file"].as_str().unwrap())).unwrap();
            let img = decode_rgb8(&bytes, &LIMITS).unwrap();
            for (key, filter) in [
                ("pil_nearest", ResizeFilter::Nearest),
                ("pil_bilinear", ResizeFilter::Bilinear),
            ] {
                let got = resized(&img, filter);
                let want =
                    std::fs::read(fixture(entry[key]["input_file"].as_str().unwrap())).unwrap();
                let diffs: Vec<u32> = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| u32::from(a.abs_diff(*b)))
                    .collect();
                let max = diffs.iter().max().unwrap();
                let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
                let exact = sha256_hex(&got) == entry[key]["input_sha256"].as_str().unwrap();
                eprintln!("{name:32} {key:13} exact={exact} max={max} mean={mean:.4}");
            }
        }
    }
}
