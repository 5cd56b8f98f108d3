//! JPEG to 8-bit RGB as Pillow makes it: `Image.open(f).convert('RGB')` decodes a JPEG with
//! libjpeg-turbo (ISLOW IDCT, fancy upsampling), and so does this module (`libjpeg_turbo`), which
//! gives the golden photos' 224x224 inputs bit for bit. Grey is replicated to RGB by libjpeg-turbo
//! itself, CMYK and YCCK files are converted as Pillow converts them ([`cmyk_to_rgb`]).
//!
//! Checked before any pixel is decoded: the pixel count, from the frame header, and the memory
//! the decode takes at its peak, against `DecodeLimits`: the output, the whole-image coefficient
//! buffer libjpeg-turbo keeps for progressive and multi-scan files, or the RGB image and the copy
//! a quarter turn makes. libjpeg-turbo is also told the limit, as a backstop for its own buffers.
//! Only what `decode::sniff` has vetted gets here: a JPEG with an end-of-image marker after its
//! last scan (libjpeg-turbo would decode a truncated file with a warning; Pillow refuses it).
use image::metadata::Orientation;
use image::RgbImage;

use super::decode::{alloc_limit_hit, DecodeLimits, PreprocessError};
use super::libjpeg_turbo::{ColourSpace, Decompressor, Header, PixelFormat, Refused};
use super::{jpeg_markers, jpeg_scale, orientation};

/// The orientation the EXIF block of `jpeg` asks for; `NoTransforms` if there is none, or it
/// is damaged or out of range.
pub(super) fn orientation(jpeg: &[u8]) -> Orientation {
    jpeg_markers::read(jpeg)
        .exif
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// Decodes `jpeg` as stored, at full size, or with `dct_scaling` at the reduced size
/// `jpeg_scale` picks. `orientation` is the turn the caller applies next: its copy counts
/// against the allocation limit.
pub(super) fn decode(
    jpeg: &[u8],
    limits: &DecodeLimits,
    orientation: Orientation,
    dct_scaling: bool,
) -> Result<RgbImage, PreprocessError> {
    let mut decompressor = Decompressor::new(limits.max_alloc_bytes).map_err(corrupt)?;
    let header = decompressor.header(jpeg).map_err(corrupt)?;
    let (width, height) = (header.width, header.height);
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let denominator = if dct_scaling {
        jpeg_scale::denominator(&header)
    } else {
        1
    };
    let format = match header.colour_space {
        ColourSpace::Cmyk | ColourSpace::Ycck => PixelFormat::Cmyk,
        ColourSpace::Rgb | ColourSpace::YCbCr | ColourSpace::Grey => PixelFormat::Rgb,
    };
    let buffered = header.progressive || jpeg_markers::read(jpeg).multi_scan;
    if peak_bytes(&header, denominator, format, buffered, orientation) > limits.max_alloc_bytes {
        return Err(alloc_limit_hit(limits));
    }
    let decoded = decompressor
        .decode(jpeg, denominator, format)
        .map_err(corrupt)?;
    if let Some(warning) = &decoded.warning {
        // Decoded all the same, as Pillow does (see `Decompressor::decode`).
        tracing::debug!(warning = %warning, "libjpeg-turbo recovered from damaged JPEG data");
    }
    let mut pixels = decoded.pixels;
    if format == PixelFormat::Cmyk {
        cmyk_to_rgb(&mut pixels);
    }
    RgbImage::from_raw(decoded.width, decoded.height, pixels)
        .ok_or_else(|| PreprocessError::Corrupt("libjpeg-turbo returned too few pixels".to_owned()))
}

fn corrupt(refused: Refused) -> PreprocessError {
    PreprocessError::Corrupt(refused.0)
}

/// Bytes the decode of `header` at 1/`denominator` scale allocates at its peak: the output
/// (`format`, converted to RGB in place), plus every DCT coefficient of the full-size image (an
/// i16 per sample, chroma subsampled) when libjpeg-turbo `buffered` the whole image; or, if
/// more, the output and the copy turning it by `orientation` makes. libjpeg-turbo's other
/// buffers (a few rows, its tables) are not counted.
fn peak_bytes(
    header: &Header,
    denominator: u8,
    format: PixelFormat,
    buffered: bool,
    orientation: Orientation,
) -> u64 {
    let scaled = |side: u32| side.div_ceil(u32::from(denominator));
    let (width, height) = if header.lossless {
        (header.width, header.height)
    } else {
        (scaled(header.width), scaled(header.height))
    };
    let output = u64::from(width) * u64::from(height) * format.bytes_per_pixel() as u64;
    let coefficients = if buffered {
        coefficient_bytes(header)
    } else {
        0
    };
    let turning = output + orientation::copy_bytes(orientation, width, height);
    (output + coefficients).max(turning)
}

/// libjpeg-turbo's whole-image coefficient buffer: per component, its blocks of 64 i16 padded
/// to whole MCUs (8 samples times the largest sampling factor).
fn coefficient_bytes(header: &Header) -> u64 {
    let (across, down) = header.chroma_subsampling;
    let padded = |side: u32, factor: u32| u64::from(side.next_multiple_of(8 * factor));
    let luma = padded(header.width, across) * padded(header.height, down) * 2;
    let chroma = luma / u64::from(across * down);
    luma + (header.colour_space.components() - 1) * chroma
}

/// Pillow's `convert('RGB')` of the CMYK libjpeg-turbo decoded, in place: the RGB pixels end up
/// in the first three quarters of `pixels`, which is cut to them.
///
/// Pillow reads every CMYK JPEG as Adobe's inverted CMYK (raw mode `CMYK;I`: c = 255 - stored),
/// then `cmyk2rgb` makes r = 255 - k - c(255 - k)/255, rounded as MULDIV255. For the stored
/// values that is stored c * stored k / 255 with the same rounding (checked against Pillow by
/// fixtures/jpeg/cmyk.jpg).
fn cmyk_to_rgb(pixels: &mut Vec<u8>) {
    let muldiv255 = |a: u8, b: u8| {
        let t = u32::from(a) * u32::from(b) + 128;
        ((t + (t >> 8)) >> 8) as u8
    };
    let pixel_count = pixels.len() / 4;
    // Pixel i moves from 4i to 3i: never past a pixel not yet read, going forwards.
    for i in 0..pixel_count {
        let [c, m, y, k] = [0, 1, 2, 3].map(|j| pixels[4 * i + j]);
        pixels[3 * i] = muldiv255(c, k);
        pixels[3 * i + 1] = muldiv255(m, k);
        pixels[3 * i + 2] = muldiv255(y, k);
    }
    pixels.truncate(pixel_count * 3);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::test_support::{
        decode_dct_scaled, decode_plain, resized, sha256_hex, FILTERS, LIMITS,
    };
    use serde_json::Value;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jpeg");

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    /// `(file, what Pillow made of it)` of scripts/make-jpeg-fixtures.py.
    fn pillow_figures() -> Vec<(String, Value)> {
        let doc: Value = serde_json::from_slice(&fixture("pillow.json")).unwrap();
        let images = doc["images"].as_object().unwrap();
        images.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn limits(max_alloc_bytes: u64) -> DecodeLimits {
        DecodeLimits {
            max_pixels: LIMITS.max_pixels,
            max_alloc_bytes,
        }
    }

    /// Progressive, 4:2:2, odd sizes, grey, CMYK, an RGB colour space and a file libjpeg-turbo
    /// warns about: the full-size RGB and both 224x224 resizes are Pillow's, bit for bit.
    #[test]
    fn every_kind_of_jpeg_decodes_as_pillow_decodes_it() {
        let mut compared = 0;
        for (name, want) in pillow_figures() {
            if want.get("error").is_some() {
                continue;
            }
            let img =
                decode_plain(&fixture(&name), &LIMITS).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (u64::from(img.width()), u64::from(img.height())),
                (
                    want["width"].as_u64().unwrap(),
                    want["height"].as_u64().unwrap()
                ),
                "{name}"
            );
            assert_eq!(
                sha256_hex(img.as_raw()),
                want["rgb_sha256"],
                "{name} ({})",
                want["mode"]
            );
            for (key, filter) in FILTERS {
                assert_eq!(
                    sha256_hex(&resized(&img, filter)),
                    want[key],
                    "{name} {filter}"
                );
            }
            compared += 1;
        }
        assert_eq!(compared, 8);
    }

    /// Pillow refuses a file whose fatal error follows a warning ("broken data stream"); so
    /// does the service, although TurboJPEG reports such a failure as a mere warning.
    #[test]
    fn a_fatal_error_after_a_warning_is_corrupt() {
        let name = "fatal-after-warning.jpg";
        let want = pillow_figures()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1;
        assert!(want["error"]
            .as_str()
            .unwrap()
            .contains("broken data stream"));
        for result in [
            decode_plain(&fixture(name), &LIMITS),
            decode_dct_scaled(&fixture(name), &LIMITS),
        ] {
            assert!(
                matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("progressive")),
                "{result:?}"
            );
        }
    }

    /// Every scan of a progressive file is a pass over the whole image: beyond `MAX_SCANS` the
    /// file is refused (here the last scan of a real file repeated, which libjpeg-turbo
    /// otherwise decodes with a warning).
    #[test]
    fn a_progressive_file_with_too_many_scans_is_corrupt() {
        let jpeg = fixture("progressive-420.jpg");
        let last_scan = jpeg.windows(2).rposition(|m| m == [0xff, 0xda]).unwrap();
        let (head, tail) = jpeg.split_at(jpeg.len() - 2); // EOI
        let scans = |repeats| {
            let mut bytes = head.to_vec();
            (0..repeats).for_each(|_| bytes.extend_from_slice(&head[last_scan..]));
            bytes.extend_from_slice(tail);
            decode_plain(&bytes, &LIMITS)
        };
        assert!(scans(10).is_ok());
        let result = scans(crate::classify::image::libjpeg_turbo::MAX_SCANS as usize);
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("more than 500 scans")),
            "{result:?}"
        );
    }

    /// A 320x240 progressive 4:2:0 file takes its 230 400-byte RGB output plus 230 400 bytes
    /// of coefficients (153 600 luma, 2 x 38 400 chroma); the same picture as a baseline
    /// (single-scan) file needs only the output.
    #[test]
    fn the_allocation_limit_counts_the_coefficients_of_progressive_files() {
        let progressive = fixture("progressive-420.jpg");
        assert!(decode_plain(&progressive, &limits(460_800)).is_ok());
        let result = decode_plain(&progressive, &limits(460_799));
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("460799 bytes")),
            "{result:?}"
        );
        assert!(decode_plain(&fixture("baseline-422.jpg"), &limits(230_400)).is_ok());
        assert!(decode_plain(&fixture("baseline-422.jpg"), &limits(230_399)).is_err());
    }

    /// CMYK: 4 bytes a pixel while decoding, turned into RGB in place.
    #[test]
    fn the_allocation_limit_counts_cmyk_at_four_bytes_a_pixel() {
        let cmyk = fixture("cmyk.jpg");
        assert!(decode_plain(&cmyk, &limits(320 * 240 * 4)).is_ok());
        assert!(decode_plain(&cmyk, &limits(320 * 240 * 4 - 1)).is_err());
    }

    #[test]
    fn cmyk_to_rgb_is_pillows_conversion_of_inverted_cmyk() {
        // Stored c * stored k / 255, rounded: 128 * 200 / 255 = 100.4. White stays white,
        // stored k = 0 (Pillow: full black ink) is black.
        let mut pixels = vec![255, 255, 255, 255, 0, 128, 255, 200, 10, 20, 30, 0];
        cmyk_to_rgb(&mut pixels);
        assert_eq!(pixels, [255, 255, 255, 0, 100, 200, 0, 0, 0]);
    }

    #[test]
    fn the_orientation_comes_from_the_exif_segment() {
        let exif = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/exif");
        for tag in 1..=8 {
            let bytes = std::fs::read(format!("{exif}/upright-{tag}.jpg")).unwrap();
            assert_eq!(
                orientation(&bytes),
                Orientation::from_exif(tag).unwrap(),
                "{tag}"
            );
        }
        for kind in ["garbage", "truncated", "value-9"] {
            let bytes = std::fs::read(format!("{exif}/bad-exif-{kind}.jpg")).unwrap();
            assert_eq!(orientation(&bytes), Orientation::NoTransforms, "{kind}");
        }
        assert_eq!(orientation(&fixture("grey.jpg")), Orientation::NoTransforms);
    }
}
