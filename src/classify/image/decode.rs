//! Untrusted bytes to 8-bit RGB: the format is sniffed from the content, the pixel count and the
//! memory the decoder may take are checked before any pixel exists, and the colour conversion is
//! Pillow's `.convert('RGB')`.
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{
    ColorType, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
};

use super::orientation;

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

/// The format of `bytes`, judged from the content only, never from a URL or a Content-Type; a
/// JPEG must also be complete.
pub(super) fn sniff(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    let format = sniff_format(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(PreprocessError::Corrupt(
            "the JPEG data ends before the end-of-image marker".to_owned(),
        ));
    }
    Ok(format)
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

/// libjpeg-turbo decodes a truncated file with a warning, filling what is
/// missing with grey, where Pillow refuses it (it runs out of data to feed the
/// decoder). A complete JPEG has an end-of-image marker after its last
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

/// Decodes `bytes`, already sniffed as `format` (not JPEG: see `jpeg`), at full size with image's
/// decoders, as stored.
/// `orientation` is the turn the caller applies next: its copy counts against the allocation limit.
pub(super) fn decode_full(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
    orientation: Orientation,
) -> Result<RgbImage, PreprocessError> {
    // The decoders are third-party parsers fed with hostile input: should one of
    // them panic, the request fails rather than the worker running it.
    catch_unwind(AssertUnwindSafe(|| {
        decode_as(bytes, format, limits, orientation)
    }))
    .unwrap_or_else(|_| {
        Err(PreprocessError::Corrupt(format!(
            "the {} decoder failed",
            format_name(format)
        )))
    })
}

fn decode_as(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
    orientation: Orientation,
) -> Result<RgbImage, PreprocessError> {
    let reader = reader(bytes, format, limits);
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
    // decoded image, and the RGB copy `into_rgb8` may make of it, are checked here;
    // the decoded image is gone by the time the RGB one is turned.
    let rgb = u64::from(width) * u64::from(height) * 3;
    let rgb_copy = if decoder.color_type() == ColorType::Rgb8 {
        0
    } else {
        rgb
    };
    let decoding = decoder.total_bytes().saturating_add(rgb_copy);
    let turning = rgb + orientation::copy_bytes(orientation, width, height);
    if decoding.max(turning) > limits.max_alloc_bytes {
        return Err(alloc_limit_hit(limits));
    }
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e, limits))?;
    Ok(into_rgb8(decoded))
}

/// An image reader for `bytes` whose decoder may allocate `limits.max_alloc_bytes` at most.
pub(super) fn reader<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> ImageReader<Cursor<&'a [u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    reader
}

fn corrupt(error: ImageError, limits: &DecodeLimits) -> PreprocessError {
    match error {
        ImageError::Limits(_) => alloc_limit_hit(limits),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

pub(super) fn alloc_limit_hit(limits: &DecodeLimits) -> PreprocessError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::test_support::{
        decode_plain, encode, jpeg_claiming, lcg_image, LIMITS,
    };
    use image::codecs::gif::GifEncoder;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::webp::WebPEncoder;
    use image::{
        Delay, Frame, GrayAlphaImage, GrayImage, ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, Rgba,
        RgbaImage,
    };

    fn assert_unsupported(bytes: &[u8]) {
        let result = decode_plain(bytes, &LIMITS);
        assert!(
            matches!(result, Err(PreprocessError::Unsupported(_))),
            "{:?}: {result:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        );
    }

    fn assert_corrupt(bytes: &[u8], what: &str) {
        let result = decode_plain(bytes, &LIMITS);
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
            match decode_plain(&bytes, &LIMITS) {
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
        let result = decode_plain(&png, &limits);
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
        let tiff = decode_plain(b"MM\0*\0\0\0\x08", &LIMITS).unwrap_err();
        assert_eq!(
            tiff.to_string(),
            "not a JPEG, PNG, GIF, BMP or WebP image (TIFF images are not accepted)"
        );
        let cut = encode(lcg_image(16, 16), ImageFormat::Png);
        let message = decode_plain(&cut[..cut.len() / 2], &LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("the image data is corrupt or truncated: "),
            "{message}"
        );
    }

    fn decode_ok(bytes: &[u8]) -> RgbImage {
        decode_plain(bytes, &LIMITS).unwrap()
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
}
