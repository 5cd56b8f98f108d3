//! Fixtures and helpers the tests of `decode`, `jpeg`, `jpeg_scale`, `resize` and this module share.
use std::io::Cursor;
use std::path::PathBuf;

use image::{DynamicImage, ImageFormat, RgbImage};

use super::resize::OUT_LEN;
use super::{
    decode_rgb8, resize_into, DecodeLimits, PreprocessError, PreprocessOptions, ResizeFilter,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/shared");
pub(super) const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 50_000_000,
    max_alloc_bytes: 512 << 20,
};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(rel)
}

pub(super) fn read_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// `(name, entry)` of every golden image stored in `format`.
pub(super) fn golden_images(format: &str) -> Vec<(String, serde_json::Value)> {
    let golden: serde_json::Value = serde_json::from_slice(&read_fixture("golden.json")).unwrap();
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

pub(super) const FILTERS: [(&str, ResizeFilter); 2] = [
    ("pil_nearest", ResizeFilter::Nearest),
    ("pil_bilinear", ResizeFilter::Bilinear),
];

pub(super) fn resized(img: &RgbImage, filter: ResizeFilter) -> Vec<u8> {
    let mut out = vec![0; OUT_LEN];
    resize_into(img, filter, &mut out);
    out
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

pub(super) fn encode(img: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    img.into().write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

/// Deterministic noise, reproducible in Python to get Pillow's results.
pub(super) fn lcg_image(width: u32, height: u32) -> RgbImage {
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

/// Rewrites the frame size in a baseline JPEG's SOF0 segment.
pub(super) fn jpeg_claiming(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
    let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// [`decode_rgb8`] with the default options: the full-size decode.
pub(super) fn decode_plain(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    decode_rgb8(bytes, limits, &PreprocessOptions::default())
}

/// [`decode_rgb8`] with `--jpeg-dct-scaling`.
pub(super) fn decode_dct_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    let options = PreprocessOptions {
        jpeg_dct_scaling: true,
        ..PreprocessOptions::default()
    };
    decode_rgb8(bytes, limits, &options)
}
