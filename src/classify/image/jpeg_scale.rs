//! Optional JPEG decoding at reduced size (`--jpeg-dct-scaling`): libjpeg-turbo's scaled IDCT
//! reconstructs each 8x8 block at 4x4, 2x2 or 1x1, so a large photo is decoded at 1/2, 1/4 or
//! 1/8 scale, which saves most of the IDCT, upsampling and colour conversion and leaves the
//! resize to 224x224 far fewer pixels. The entropy decoding costs the same at any scale.
//!
//! The pixels differ from a full decode followed by the resize (the IDCT does the first part of
//! the downscaling), so they are no longer Pillow's and this is off by default. The decode itself,
//! its checks and its errors are `jpeg::decode`'s; this module only picks the scale.

use super::libjpeg_turbo::Header;
use super::resize::SIDE;

/// Only JPEGs larger than this in both axes are decoded scaled: below it not even 1/2 scale
/// would keep both sides at the model input size.
pub const MIN_SIDE: u32 = 2 * SIDE as u32;

/// The denominator of the smallest of 1/8, 1/4 and 1/2 scale that keeps both sides of `header`'s
/// image at least `SIDE` pixels (libjpeg-turbo rounds scaled sides up); 1, a full decode, for
/// images not larger than `MIN_SIDE` in both axes and for lossless JPEGs, which libjpeg-turbo
/// cannot scale. Turning the result by its EXIF orientation does not change its shorter side.
pub(super) fn denominator(header: &Header) -> u8 {
    let shorter = header.width.min(header.height);
    if shorter <= MIN_SIDE || header.lossless {
        return 1;
    }
    [8, 4, 2]
        .into_iter()
        .find(|&d| shorter.div_ceil(u32::from(d)) >= SIDE as u32)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::libjpeg_turbo::ColourSpace;
    use crate::classify::image::test_support::{
        decode_dct_scaled, decode_plain, encode, golden_images, jpeg_claiming, lcg_image,
        read_fixture, resized, FILTERS, LIMITS,
    };
    use crate::classify::image::{
        preprocess, scale_into, DecodeLimits, PreprocessError, PreprocessOptions, ResizeFilter,
    };
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageEncoder, ImageFormat, Rgb, RgbImage};

    /// The decode with scaling on where it is smaller than the full one, `None` where not.
    fn scaled(bytes: &[u8]) -> Option<RgbImage> {
        let with = decode_dct_scaled(bytes, &LIMITS).unwrap();
        let full = decode_plain(bytes, &LIMITS).unwrap();
        (with.dimensions() != full.dimensions()).then_some(with)
    }

    fn header(width: u32, height: u32, lossless: bool) -> Header {
        Header {
            width,
            height,
            colour_space: ColourSpace::YCbCr,
            chroma_subsampling: (2, 2),
            progressive: false,
            lossless,
        }
    }

    /// Both sides stay at least 224 after libjpeg-turbo's rounding up: 1785 / 8 = 223.1 is 224.
    #[test]
    fn the_scale_keeps_the_shorter_side_at_224() {
        for ((width, height), want) in [
            ((448, 5000), 1),
            ((449, 449), 2),
            ((5000, 892), 2),
            ((893, 2000), 4),
            ((1784, 1784), 4),
            ((1785, 1785), 8),
            ((10_000, 60_000), 8),
        ] {
            assert_eq!(
                denominator(&header(width, height, false)),
                want,
                "{width}x{height}"
            );
            assert_eq!(
                denominator(&header(height, width, false)),
                want,
                "{height}x{width}"
            );
        }
        assert_eq!(denominator(&header(4000, 3000, true)), 1, "lossless");
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
    /// stands for. Measured mean abs difference per byte: cat_1080p 0.32,
    /// cat_720p 0.34, kite_and_cold 0.33, parrot 0.44 (libjpeg-turbo; jpeg-decoder's
    /// scaled IDCT, used before, was 0.95 to 1.42 off).
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
            assert!(mean < 0.6, "{name}: mean abs difference {mean:.3}");
        }
    }

    /// Measured mean abs difference per byte of the 224x224 RGB, scaled vs
    /// full decode: bilinear 0.33 (cat_720p) to 2.05 (parrot), 0.50 for
    /// cat_1080p; nearest 2.63 to 5.98 (3.71 for cat_1080p), because nearest on
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

    /// Errors are those of the full decode: the same decoder with the same checks. The noise
    /// in the last case is damage libjpeg-turbo recovers from (with a warning) at either size.
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
        assert_eq!(noise_decoded.unwrap().dimensions(), (300, 250));
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
