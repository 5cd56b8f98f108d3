//! EXIF orientation (`--exif-orientation apply`): a phone stores a portrait photo as the sensor
//! saw it, landscape, and records in its EXIF block how to turn it upright. Keras `load_img`
//! ignores that tag, so honouring it is opt-in.
//!
//! The tag is read from a JPEG's APP1 segment by `jpeg::orientation`, and from PNG (eXIf) and
//! WebP (EXIF) by image's own decoders (`ImageDecoder::orientation`; GIF and BMP have none), and
//! applied to the decoded RGB before the resize. A missing,
//! damaged or out-of-range tag means orientation 1: the metadata never fails a request.
use std::io::{BufRead, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// The orientation the image behind `reader` asks for; `NoTransforms` whenever the header or the
/// EXIF block cannot be read (the decode that follows reports a broken header).
pub(super) fn read<R: BufRead + Seek>(reader: ImageReader<R>) -> Orientation {
    // Only headers and metadata are parsed here, by third-party parsers fed with hostile input.
    catch_unwind(AssertUnwindSafe(|| {
        reader
            .into_decoder()
            .and_then(|mut decoder| decoder.orientation())
            .ok()
    }))
    .ok()
    .flatten()
    .unwrap_or(Orientation::NoTransforms)
}

/// Bytes of the second RGB buffer turning a `width x height` image by `orientation` allocates:
/// rotations by 90 or 270 degrees copy, flips and the half turn work in place.
pub(super) fn copy_bytes(orientation: Orientation, width: u32, height: u32) -> u64 {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => u64::from(width) * u64::from(height) * 3,
        Orientation::NoTransforms
        | Orientation::Rotate180
        | Orientation::FlipHorizontal
        | Orientation::FlipVertical => 0,
    }
}

/// `img` as a viewer honouring `orientation` shows it.
pub(super) fn apply(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let mut turned = DynamicImage::ImageRgb8(img);
    turned.apply_orientation(orientation);
    turned.into_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::image::test_support::{decode_plain, LIMITS};
    use crate::classify::image::{decode_rgb8, DecodeLimits, PreprocessError, PreprocessOptions};
    use image::codecs::jpeg::JpegEncoder;
    use image::{ExtendedColorType, ImageEncoder, ImageFormat, Rgb};
    use std::io::Cursor;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/exif");
    const EXTENSIONS: [&str; 3] = ["jpg", "png", "webp"];
    // scripts/make-exif-fixtures.py: top left, top right, bottom left, bottom right.
    const RED: [u8; 3] = [220, 30, 30];
    const GREEN: [u8; 3] = [30, 200, 30];
    const BLUE: [u8; 3] = [30, 30, 220];
    const YELLOW: [u8; 3] = [230, 220, 30];
    const UPRIGHT: [[u8; 3]; 4] = [RED, GREEN, BLUE, YELLOW];

    /// The corners of the stored 64x48 image for each tag, worked out by hand from the EXIF
    /// definitions (tag 6: the viewer turns it 90 degrees clockwise, so it is stored turned
    /// counter-clockwise): an independent check of the files and of what `ignore` decodes.
    fn stored_corners(tag: u8) -> ((u32, u32), [[u8; 3]; 4]) {
        let (landscape, portrait) = ((64, 48), (48, 64));
        match tag {
            1 => (landscape, [RED, GREEN, BLUE, YELLOW]),
            2 => (landscape, [GREEN, RED, YELLOW, BLUE]),
            3 => (landscape, [YELLOW, BLUE, GREEN, RED]),
            4 => (landscape, [BLUE, YELLOW, RED, GREEN]),
            5 => (portrait, [RED, BLUE, GREEN, YELLOW]),
            6 => (portrait, [GREEN, YELLOW, RED, BLUE]),
            7 => (portrait, [YELLOW, GREEN, BLUE, RED]),
            8 => (portrait, [BLUE, RED, YELLOW, GREEN]),
            _ => unreachable!(),
        }
    }

    /// The tag as `decode_rgb8` reads it for `format`.
    fn read_tag(bytes: &[u8], format: ImageFormat) -> Orientation {
        if format == ImageFormat::Jpeg {
            crate::classify::image::jpeg::orientation(bytes)
        } else {
            read(ImageReader::with_format(Cursor::new(bytes), format))
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn apply_tag() -> PreprocessOptions {
        PreprocessOptions {
            apply_exif_orientation: true,
            ..PreprocessOptions::default()
        }
    }

    /// The colour at the centre of each quadrant (away from JPEG's blurred edges).
    fn quadrant_colours(img: &RgbImage) -> [[u8; 3]; 4] {
        let (w, h) = img.dimensions();
        [(1, 1), (3, 1), (1, 3), (3, 3)].map(|(x, y)| img.get_pixel(w * x / 4, h * y / 4).0)
    }

    fn assert_colours(img: &RgbImage, want: [[u8; 3]; 4], what: &str) {
        let got = quadrant_colours(img);
        let close = got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.iter().zip(w).all(|(a, b)| a.abs_diff(*b) < 12));
        assert!(close, "{what}: quadrants {got:?}, want {want:?}");
    }

    #[test]
    fn apply_turns_every_format_and_orientation_upright() {
        for tag in 1..=8 {
            for ext in EXTENSIONS {
                let name = format!("upright-{tag}.{ext}");
                let img = decode_rgb8(&fixture(&name), &LIMITS, &apply_tag()).unwrap();
                assert_eq!(img.dimensions(), (64, 48), "{name}");
                assert_colours(&img, UPRIGHT, &name);
            }
        }
    }

    #[test]
    fn ignore_decodes_the_stored_pixels() {
        for tag in 1..=8 {
            for ext in EXTENSIONS {
                let name = format!("upright-{tag}.{ext}");
                let img = decode_plain(&fixture(&name), &LIMITS).unwrap();
                let (size, corners) = stored_corners(tag);
                assert_eq!(img.dimensions(), size, "{name}");
                assert_colours(&img, corners, &name);
            }
        }
    }

    #[test]
    fn the_tag_is_read_from_jpeg_png_and_webp() {
        for tag in 1..=8 {
            for (ext, format) in
                EXTENSIONS
                    .into_iter()
                    .zip([ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP])
            {
                let got = read_tag(&fixture(&format!("upright-{tag}.{ext}")), format);
                assert_eq!(got, Orientation::from_exif(tag).unwrap(), "{tag}.{ext}");
            }
        }
    }

    /// A garbage block, a TIFF cut inside its directory, and tag value 9 (out of range): the
    /// stored pixels (turned 90 degrees counter-clockwise) come back as they are, without error.
    #[test]
    fn a_damaged_exif_block_means_orientation_1() {
        for kind in ["garbage", "truncated", "value-9"] {
            for ext in EXTENSIONS {
                let name = format!("bad-exif-{kind}.{ext}");
                let bytes = fixture(&name);
                let img = decode_rgb8(&bytes, &LIMITS, &apply_tag()).unwrap();
                assert!(img == decode_plain(&bytes, &LIMITS).unwrap(), "{name}");
                assert_eq!(img.dimensions(), (48, 64), "{name}");
                assert_colours(&img, stored_corners(6).1, &name);
            }
        }
    }

    #[test]
    fn headers_that_do_not_parse_mean_orientation_1() {
        let jpeg = fixture("upright-6.jpg");
        for bytes in [&jpeg[..20], &jpeg[..2], b"\x89PNG\r\n\x1a\n".as_slice()] {
            for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
                assert_eq!(read_tag(bytes, format), Orientation::NoTransforms);
            }
        }
    }

    /// A big-endian TIFF block with one directory entry: Orientation (0x0112), SHORT, 1 value.
    fn exif_with_orientation(tag: u8) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0".to_vec();
        tiff.push(tag);
        tiff.extend_from_slice(&[0; 6]);
        tiff
    }

    fn tagged_jpeg(stored: &RgbImage, tag: u8) -> Vec<u8> {
        let mut jpeg = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, 95);
        encoder
            .set_exif_metadata(exif_with_orientation(tag))
            .unwrap();
        let (w, h) = stored.dimensions();
        encoder
            .write_image(stored.as_raw(), w, h, ExtendedColorType::Rgb8)
            .unwrap();
        jpeg
    }

    fn quadrants(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb(UPRIGHT[usize::from(x >= width / 2) + 2 * usize::from(y >= height / 2)])
        })
    }

    /// The inverse of tag n's transform: tags 6 and 8 undo each other, the others undo themselves.
    fn stored_for(upright: &RgbImage, tag: u8) -> RgbImage {
        let inverse = match tag {
            6 => 8,
            8 => 6,
            other => other,
        };
        apply(upright.clone(), Orientation::from_exif(inverse).unwrap())
    }

    /// `--jpeg-dct-scaling` decodes a 640x480 JPEG at 1/2 scale, then turns it upright.
    #[test]
    fn the_scaled_jpeg_decode_is_turned_upright_too() {
        let upright = quadrants(640, 480);
        let options = PreprocessOptions {
            jpeg_dct_scaling: true,
            ..apply_tag()
        };
        for tag in 1..=8 {
            let jpeg = tagged_jpeg(&stored_for(&upright, tag), tag);
            let img = decode_rgb8(&jpeg, &LIMITS, &options).unwrap();
            assert_eq!(img.dimensions(), (320, 240), "tag {tag}");
            assert_colours(&img, UPRIGHT, &format!("tag {tag}"));
        }
    }

    /// A quarter turn copies the RGB image, and the allocation limit counts the copy, in the full
    /// decode (48x64 RGB: 9 216 bytes, 18 432 while turning) and in the scaled one (320x240:
    /// 230 400, 460 800 while turning). Flips and half turns work in place.
    #[test]
    fn the_allocation_limit_counts_the_turn() {
        let limits = |max_alloc_bytes| DecodeLimits {
            max_pixels: LIMITS.max_pixels,
            max_alloc_bytes,
        };
        let small = limits(12_000);
        let quarter = fixture("upright-6.png");
        assert!(decode_plain(&quarter, &small).is_ok());
        let result = decode_rgb8(&quarter, &small, &apply_tag());
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("12000 bytes")),
            "{result:?}"
        );
        assert!(decode_rgb8(&fixture("upright-3.png"), &small, &apply_tag()).is_ok());

        let scaled = PreprocessOptions {
            jpeg_dct_scaling: true,
            ..apply_tag()
        };
        let upright = quadrants(640, 480);
        let half_turn = tagged_jpeg(&stored_for(&upright, 3), 3);
        assert!(decode_rgb8(&half_turn, &limits(300_000), &scaled).is_ok());
        let quarter_turn = tagged_jpeg(&stored_for(&upright, 6), 6);
        let result = decode_rgb8(&quarter_turn, &limits(300_000), &scaled);
        assert!(
            matches!(&result, Err(PreprocessError::Corrupt(m)) if m.contains("300000 bytes")),
            "{result:?}"
        );
    }

    /// Each transform on a 3x2 image, pixel by pixel, from the EXIF definitions: tag n's
    /// transform takes the stored 0th row and column to the positions the tag names.
    #[test]
    fn apply_matches_the_exif_definitions() {
        // a b c
        // d e f
        let stored = RgbImage::from_fn(3, 2, |x, y| Rgb([(y * 3 + x) as u8; 3]));
        let rows = |img: &RgbImage| -> Vec<Vec<u8>> {
            (0..img.height())
                .map(|y| (0..img.width()).map(|x| img.get_pixel(x, y)[0]).collect())
                .collect()
        };
        let want: [Vec<Vec<u8>>; 8] = [
            vec![vec![0, 1, 2], vec![3, 4, 5]],
            vec![vec![2, 1, 0], vec![5, 4, 3]],
            vec![vec![5, 4, 3], vec![2, 1, 0]],
            vec![vec![3, 4, 5], vec![0, 1, 2]],
            vec![vec![0, 3], vec![1, 4], vec![2, 5]],
            vec![vec![3, 0], vec![4, 1], vec![5, 2]],
            vec![vec![5, 2], vec![4, 1], vec![3, 0]],
            vec![vec![2, 5], vec![1, 4], vec![0, 3]],
        ];
        for (tag, want) in (1..=8).zip(want) {
            let orientation = Orientation::from_exif(tag).unwrap();
            assert_eq!(rows(&apply(stored.clone(), orientation)), want, "tag {tag}");
            let copies = if tag >= 5 { 18 } else { 0 };
            assert_eq!(copy_bytes(orientation, 3, 2), copies, "tag {tag}");
        }
    }
}
