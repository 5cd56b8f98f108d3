//! Optional JPEG decoding at reduced size (`--jpeg-dct-scaling`): jpeg-decoder's scaled IDCT
//! reconstructs each 8x8 block at 4x4, 2x2 or 1x1, so a large photo is decoded at 1/2, 1/4 or 1/8
//! scale, which saves most of the IDCT, upsampling and colour conversion and leaves the resize to
//! 224x224 far fewer pixels. The entropy decoding costs the same at any scale, and jpeg-decoder's
//! is slower than zune-jpeg's, so the gain depends on the photo (`cargo bench --bench pipeline`).
//!
//! The pixels differ from a full decode followed by the resize (the IDCT does the first part of
//! the downscaling, and jpeg-decoder rounds differently from zune-jpeg), so this is off by default.
//! Only what [`super::decode_rgb8`] has already vetted gets here: sniffed as JPEG, with an
//! end-of-image marker after its last scan.

use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::RgbImage;
use jpeg_decoder::{CodingProcess, Decoder, ImageInfo, PixelFormat};

use super::decode::{alloc_limit_hit, pack_rgb, DecodeLimits, PreprocessError};
use super::orientation;
use super::resize::SIDE;

/// Only JPEGs larger than this in both axes are decoded scaled: below it not even 1/2 scale
/// would keep both sides at the model input size.
pub const MIN_SIDE: u32 = 2 * SIDE as u32;

/// Decodes `bytes`, a complete JPEG, at the smallest of 1/8, 1/4 and 1/2 scale that keeps both
/// sides at least `SIDE` pixels.
///
/// `Ok(None)` when this path does not apply and the caller decodes at full size as usual: images
/// not larger than `MIN_SIDE` in both axes, CMYK, 16-bit and lossless JPEGs, and any header or data
/// jpeg-decoder refuses or panics on, so that errors (and what zune-jpeg's leniency accepts) stay
/// what the full decode says. The pixel limit is checked from the header and the allocation limit
/// against the scaled output before any pixel is decoded; those give the usual errors.
///
/// The output is as stored; `orientation` is the turn the caller applies next, whose copy counts
/// against the allocation limit. Turning does not change the shorter side, so the turned image
/// keeps both sides at least `SIDE` too.
pub fn decode_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    orientation: Orientation,
) -> Result<Option<RgbImage>, PreprocessError> {
    // A third-party parser fed with hostile input: a panic means "let the full decode answer".
    catch_unwind(AssertUnwindSafe(|| decode(bytes, limits, orientation))).unwrap_or(Ok(None))
}

fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
    orientation: Orientation,
) -> Result<Option<RgbImage>, PreprocessError> {
    let mut decoder = Decoder::new(bytes);
    // Reads up to the frame header only.
    let Some(info) = decoder.read_info().ok().and(decoder.info()) else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let channels: u64 = match info.pixel_format {
        PixelFormat::L8 => 1,
        PixelFormat::RGB24 => 3,
        // CMYK is left to image's conversion; L16 only comes from lossless JPEGs.
        PixelFormat::L16 | PixelFormat::CMYK32 => return Ok(None),
    };
    if width <= MIN_SIDE || height <= MIN_SIDE || info.coding_process == CodingProcess::Lossless {
        return Ok(None);
    }
    // jpeg-decoder picks the smallest scale at which *either* side reaches the request, so only
    // the shorter side is asked for: the longer one is then at least as large.
    let (ask_w, ask_h) = if width <= height {
        (SIDE as u16, u16::MAX)
    } else {
        (u16::MAX, SIDE as u16)
    };
    let Ok((scaled_w, scaled_h)) = decoder.scale(ask_w, ask_h) else {
        return Ok(None);
    };
    let (scaled_w, scaled_h) = (u32::from(scaled_w), u32::from(scaled_h));
    let scaled = (scaled_w, scaled_h);
    if scaled_allocation(&info, scaled, channels, orientation) > limits.max_alloc_bytes {
        return Err(alloc_limit_hit(limits));
    }
    decoder.set_max_decoding_buffer_size(
        usize::try_from(limits.max_alloc_bytes).unwrap_or(usize::MAX),
    );
    let Ok(pixels) = decoder.decode() else {
        return Ok(None);
    };
    if pixels.len() as u64 != u64::from(scaled_w) * u64::from(scaled_h) * channels
        || scaled_w < SIDE as u32
        || scaled_h < SIDE as u32
    {
        return Ok(None);
    }
    Ok(Some(if channels == 3 {
        RgbImage::from_raw(scaled_w, scaled_h, pixels).expect("length checked above")
    } else {
        pack_rgb(scaled_w, scaled_h, &pixels, 1, |v| v)
    }))
}

/// Bytes a scaled decode to `(width, height)` allocates at its peak: its output of `channels`
/// bytes a pixel, the RGB copy of a grey one, and for a progressive JPEG every DCT coefficient
/// (an i16 per sample), which it keeps until its last scan; or, if more, the RGB image and the
/// copy turning it by `orientation` makes.
fn scaled_allocation(
    info: &ImageInfo,
    (width, height): (u32, u32),
    channels: u64,
    orientation: Orientation,
) -> u64 {
    let scaled_pixels = u64::from(width) * u64::from(height);
    let turning = scaled_pixels * 3 + orientation::copy_bytes(orientation, width, height);
    let output = scaled_pixels * channels;
    let rgb_copy = if channels == 3 { 0 } else { scaled_pixels * 3 };
    let coefficients = if info.coding_process == CodingProcess::DctProgressive {
        u64::from(u32::from(info.width).next_multiple_of(16))
            * u64::from(u32::from(info.height).next_multiple_of(16))
            * channels
            * 2
    } else {
        0
    };
    (output + rgb_copy + coefficients).max(turning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::test_support::{
        decode_dct_scaled, decode_plain, encode, golden_images, jpeg_claiming, lcg_image,
        read_fixture, resized, FILTERS, LIMITS,
    };
    use crate::classify::image::{preprocess, scale_into, PreprocessOptions, ResizeFilter};
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageEncoder, ImageFormat, Rgb};

    fn scaled(bytes: &[u8]) -> Option<RgbImage> {
        decode_scaled(bytes, &LIMITS, Orientation::NoTransforms).unwrap()
    }

    /// Every golden JPEG, with the size it decodes to with scaling on.
    #[test]
    fn large_jpegs_decode_at_the_smallest_scale_that_keeps_224() {
        let want = [
            ("cat_1080p.jpg", Some((480, 270))),
            ("cat_720p.jpg", Some((640, 360))),
            ("kite_and_cold.jpg", Some((338, 225))),
            ("parrot.jpg", Some((256, 465))),
            ("owl.jpg", None),
            ("hot_dog.jpg", None),
            ("pets.jpg", None),
        ];
        let golden = golden_images("JPEG");
        assert_eq!(golden.len(), want.len());
        for (name, size) in want {
            let bytes = read_fixture(&format!("images/{name}"));
            let got = scaled(&bytes).map(|img| img.dimensions());
            assert_eq!(got, size, "{name}");
            let full = decode_plain(&bytes, &LIMITS).unwrap();
            let with = decode_dct_scaled(&bytes, &LIMITS).unwrap();
            assert_eq!(
                with.dimensions(),
                size.unwrap_or(full.dimensions()),
                "{name}"
            );
            if size.is_none() {
                assert!(with == full, "{name}: small JPEGs are decoded as before");
            }
        }
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        let sum: u64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.len() as f64
    }

    /// `factor x factor` box average of `img` (the edge blocks over what is left).
    fn box_average(img: &RgbImage, factor: u32) -> RgbImage {
        let (w, h) = img.dimensions();
        RgbImage::from_fn(w.div_ceil(factor), h.div_ceil(factor), |x, y| {
            let (mut sum, mut n) = ([0u32; 3], 0);
            for yy in y * factor..((y + 1) * factor).min(h) {
                for xx in x * factor..((x + 1) * factor).min(w) {
                    let px = img.get_pixel(xx, yy).0;
                    (0..3).for_each(|c| sum[c] += u32::from(px[c]));
                    n += 1;
                }
            }
            Rgb(sum.map(|v| ((v + n / 2) / n) as u8))
        })
    }

    /// The scaled IDCT is close to averaging the full decode over the blocks it
    /// stands for. Measured mean abs difference per byte: cat_1080p 1.19,
    /// cat_720p 0.98, kite_and_cold 0.95, parrot 1.42.
    #[test]
    fn scaled_decode_is_the_block_average_of_the_full_one() {
        for (name, factor) in [
            ("cat_1080p.jpg", 4),
            ("cat_720p.jpg", 2),
            ("kite_and_cold.jpg", 4),
            ("parrot.jpg", 2),
        ] {
            let bytes = read_fixture(&format!("images/{name}"));
            let want = box_average(&decode_plain(&bytes, &LIMITS).unwrap(), factor);
            let got = scaled(&bytes).unwrap();
            let mean = mean_abs_diff(got.as_raw(), want.as_raw());
            assert!(mean < 2.0, "{name}: mean abs difference {mean:.3}");
        }
    }

    /// Measured mean abs difference per byte of the 224x224 RGB, scaled vs
    /// full decode: bilinear 0.40 (cat_720p) to 1.99 (parrot), 0.76 for
    /// cat_1080p; nearest 2.78 to 6.25 (3.95 for cat_1080p), because nearest on
    /// the full decode picks single pixels where the scaled IDCT has averaged.
    #[test]
    fn the_model_input_stays_close_to_the_full_decode() {
        let mut scaled_images = 0;
        for (name, entry) in golden_images("JPEG") {
            let bytes = read_fixture(entry["file"].as_str().unwrap());
            let full = decode_plain(&bytes, &LIMITS).unwrap();
            let with = decode_dct_scaled(&bytes, &LIMITS).unwrap();
            scaled_images += usize::from(with.dimensions() != full.dimensions());
            for ((_, filter), bound) in FILTERS.into_iter().zip([8.0, 2.5]) {
                let mean = mean_abs_diff(&resized(&full, filter), &resized(&with, filter));
                assert!(
                    mean <= bound,
                    "{name} {filter}: mean abs difference {mean:.3}"
                );
            }
        }
        assert_eq!(scaled_images, 4);
    }

    #[test]
    fn off_by_default_and_off_is_todays_output() {
        assert!(!PreprocessOptions::default().jpeg_dct_scaling);
        let bytes = read_fixture("images/cat_1080p.jpg");
        let full = decode_plain(&bytes, &LIMITS).unwrap();
        for filter in [ResizeFilter::Nearest, ResizeFilter::Bilinear] {
            let mut want = vec![0.0; SIDE * SIDE * 3];
            scale_into(&resized(&full, filter), &mut want);
            let mut got = vec![f32::NAN; want.len()];
            let mut options = PreprocessOptions {
                filter,
                ..PreprocessOptions::default()
            };
            preprocess(&bytes, &LIMITS, &options, &mut got).unwrap();
            assert!(got == want, "default options, {filter}");
            options.jpeg_dct_scaling = true;
            preprocess(&bytes, &LIMITS, &options, &mut got).unwrap();
            assert!(got != want, "scaling on changes the pixels, {filter}");
        }
    }

    #[test]
    fn other_formats_are_unaffected() {
        let png = encode(lcg_image(600, 500), ImageFormat::Png);
        for bytes in [
            png,
            read_fixture("images/squat.bmp"),
            read_fixture("images/imprinting/hotdog_train_0.bmp"),
        ] {
            let with = decode_dct_scaled(&bytes, &LIMITS).unwrap();
            assert!(with == decode_plain(&bytes, &LIMITS).unwrap());
        }
    }

    fn grey_jpeg(width: u32, height: u32) -> Vec<u8> {
        let grey: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| ((x / 8 + y / 8) * 9 % 256) as u8))
            .collect();
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .write_image(&grey, width, height, image::ExtendedColorType::L8)
            .unwrap();
        jpeg
    }

    #[test]
    fn grey_jpegs_are_replicated_to_rgb() {
        let jpeg = grey_jpeg(600, 500);
        let got = scaled(&jpeg).unwrap();
        assert_eq!(got.dimensions(), (300, 250));
        assert!(got.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
        let want = box_average(&decode_plain(&jpeg, &LIMITS).unwrap(), 2);
        let mean = mean_abs_diff(got.as_raw(), want.as_raw());
        assert!(mean < 0.5, "mean abs difference {mean:.3}");
    }

    /// Errors are those of the full decode, which is also what answers for
    /// anything jpeg-decoder refuses: the noise in the last case makes
    /// jpeg-decoder fail, and zune-jpeg decodes it (at full size) as before.
    #[test]
    fn errors_are_unchanged() {
        let jpeg = encode(lcg_image(600, 500), ImageFormat::Jpeg);
        let mut damaged = vec![
            jpeg[..jpeg.len() / 2].to_vec(),
            jpeg[..40].to_vec(),
            jpeg_claiming(jpeg.clone(), 60_000, 60_000),
            jpeg_claiming(jpeg.clone(), 0, 500),
        ];
        let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        let mut no_components = jpeg.clone();
        no_components[sof + 9] = 0;
        damaged.push(no_components);
        let mut noise = jpeg.clone();
        let mid = noise.len() / 2;
        noise[mid..mid + 64].fill(0xff);
        damaged.push(noise);
        let noise_decoded = decode_dct_scaled(damaged.last().unwrap(), &LIMITS);
        assert_eq!(noise_decoded.unwrap().dimensions(), (600, 500));
        for (i, bytes) in damaged.iter().enumerate() {
            let off = decode_plain(bytes, &LIMITS);
            let on = decode_dct_scaled(bytes, &LIMITS);
            match (&off, &on) {
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "case {i}"),
                (Ok(_), Ok(_)) => {}
                _ => panic!("case {i}: {off:?} / {on:?}"),
            }
        }
        assert!(matches!(
            decode_dct_scaled(&damaged[2], &LIMITS),
            Err(PreprocessError::TooManyPixels {
                width: 60_000,
                height: 60_000,
                ..
            })
        ));
    }

    /// The allocation limit counts the scaled output: cat_1080p needs 388 800
    /// bytes at 1/4 scale, 6 220 800 at full size.
    #[test]
    fn allocation_limit_counts_the_scaled_output() {
        let bytes = read_fixture("images/cat_1080p.jpg");
        let limits = |max_alloc_bytes| DecodeLimits {
            max_pixels: LIMITS.max_pixels,
            max_alloc_bytes,
        };
        let fits = decode_dct_scaled(&bytes, &limits(400_000)).unwrap();
        assert_eq!(fits.dimensions(), (480, 270));
        assert!(decode_plain(&bytes, &limits(400_000)).is_err());
        let result = decode_dct_scaled(&bytes, &limits(300_000));
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("300000 bytes")),
            "{result:?}"
        );
    }
}
