//! Turns untrusted image bytes into the MobileNet input tensor.
//!
//! The reference pipeline (`fixtures/shared/golden.json`) is Pillow 13:
//! `Image.open(f).convert('RGB').resize((224, 224), NEAREST | BILINEAR)`, then
//! `x / 127.5 - 1`. Both resize filters are reimplemented here bit for bit, so
//! for losslessly stored images (BMP, PNG, ...) the tensor fed to the model is
//! the very one the golden probabilities were computed from. JPEGs are decoded
//! by libjpeg-turbo, Pillow's JPEG library, with Pillow's options, so theirs is too.
//!
//! [`decode_rgb8`] makes 8-bit RGB of the bytes (`jpeg` through `libjpeg_turbo`, at the reduced
//! size `jpeg_scale` picks for large JPEGs with `--jpeg-dct-scaling`; `decode` for the other
//! formats), turned upright by `orientation` with `--exif-orientation apply`, `resize` brings it
//! to `SIDE x SIDE`, and [`scale_into`] to floats.
mod decode;
mod jpeg;
mod jpeg_markers;
mod jpeg_scale;
mod libjpeg_turbo;
mod orientation;
mod resize;
#[cfg(test)]
mod test_support;

use image::metadata::Orientation;
use image::{ImageFormat, RgbImage};

pub use decode::{DecodeLimits, PreprocessError};
pub use resize::{resize_into, ParseResizeFilterError, ResizeFilter, SIDE};

use resize::OUT_LEN;

/// How [`preprocess`] turns image bytes into the model input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessOptions {
    pub filter: ResizeFilter,
    /// Decode JPEGs larger than `2 * SIDE` in both axes at reduced size in the
    /// IDCT before the resize: less work on large photos, but the pixels are no
    /// longer Pillow's. Off by default.
    pub jpeg_dct_scaling: bool,
    /// Turn JPEG, PNG and WebP images upright by their EXIF orientation before the resize. Off by
    /// default: Keras `load_img`, which the reference follows, ignores the tag.
    pub apply_exif_orientation: bool,
}

/// Decodes `bytes` to 8-bit RGB.
///
/// The format is sniffed from the content only, never from a URL or a
/// Content-Type. Only the first frame of an animated image is used. Colour
/// conversion follows Pillow's `.convert('RGB')`: grey is replicated, alpha is
/// dropped (not blended against a background), palettes are expanded, CMYK
/// JPEGs are converted as Pillow converts them. JPEGs are decoded by
/// libjpeg-turbo with Pillow's settings, so their pixels are Pillow's. 16-bit
/// samples keep their high byte, as Pillow does for 16-bit RGB(A) PNGs (for
/// 16-bit grey Pillow clips to 255 instead, a quirk not worth copying). EXIF
/// orientation is ignored, as in the reference pipeline, unless
/// `options.apply_exif_orientation`: then the image comes back as a viewer
/// honouring the tag shows it (a damaged or missing tag counts as orientation
/// 1), and the memory the turn takes counts against the allocation limit.
///
/// With `options.jpeg_dct_scaling`, a JPEG larger than `2 * SIDE` in both axes
/// comes back decoded at 1/2, 1/4 or 1/8 scale (never below `SIDE` on either
/// side; see `jpeg_scale`), with the same checks and errors. `options.filter`
/// plays no part here.
pub fn decode_rgb8(
    bytes: &[u8],
    limits: &DecodeLimits,
    options: &PreprocessOptions,
) -> Result<RgbImage, PreprocessError> {
    let format = decode::sniff(bytes)?;
    let orientation = match (options.apply_exif_orientation, format) {
        (false, _) => Orientation::NoTransforms,
        (true, ImageFormat::Jpeg) => jpeg::orientation(bytes),
        (true, _) => orientation::read(decode::reader(bytes, format, limits)),
    };
    // The scaled decode serves oriented JPEGs too: portrait phone photos are exactly the large
    // JPEGs it is for, and turning its smaller output costs less than turning a full decode.
    let stored = if format == ImageFormat::Jpeg {
        jpeg::decode(bytes, limits, orientation, options.jpeg_dct_scaling)?
    } else {
        decode::decode_full(bytes, format, limits, orientation)?
    };
    Ok(orientation::apply(stored, orientation))
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
    options: &PreprocessOptions,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    assert_eq!(out.len(), OUT_LEN, "preprocess needs a SIDE*SIDE*3 buffer");
    let img = decode_rgb8(bytes, limits, options)?;
    let mut resized = vec![0; OUT_LEN];
    resize_into(&img, options.filter, &mut resized);
    scale_into(&resized, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::{golden_images, read_fixture, LIMITS};

    #[test]
    fn preprocess_feeds_the_golden_tensor() {
        let (name, entry) = golden_images("BMP").remove(0);
        let want_rgb = read_fixture(entry["pil_bilinear"]["input_file"].as_str().unwrap());
        let mut want = vec![0.0; OUT_LEN];
        scale_into(&want_rgb, &mut want);
        let mut got = vec![f32::NAN; OUT_LEN];
        let bytes = read_fixture(entry["file"].as_str().unwrap());
        let options = PreprocessOptions {
            filter: ResizeFilter::Bilinear,
            ..PreprocessOptions::default()
        };
        preprocess(&bytes, &LIMITS, &options, &mut got).unwrap();
        assert!(got == want, "{name}");
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
}
