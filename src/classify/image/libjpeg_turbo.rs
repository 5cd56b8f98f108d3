//! The door to libjpeg-turbo, the JPEG library Pillow (and so Keras `load_img`) decodes with:
//! its TurboJPEG 3 API through `turbojpeg-sys`, which builds the bundled libjpeg-turbo 3.1 from
//! source and links it statically. Default decompression parameters are Pillow's: the accurate
//! integer IDCT (ISLOW) and fancy (smooth) chroma upsampling, so the pixels are the reference's.
//!
//! This module and `crate::rss` are the only ones allowed `unsafe`: each call below hands
//! libjpeg-turbo a handle this module created and owns, the caller's JPEG bytes by pointer and
//! length, and an output buffer it sized itself from the same header (see each `SAFETY`). The
//! `turbojpeg` crate wraps the same calls safely but turns every warning into an error and does
//! not expose the memory limit, both of which the service needs (see [`Decompressor::decode`]).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ptr::NonNull;

use turbojpeg_sys as tj;

/// libjpeg-turbo's own words for why it refused a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused(pub String);

/// The colour space of the stored samples, which decides the output pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ColourSpace {
    Rgb,
    YCbCr,
    Grey,
    Cmyk,
    Ycck,
}

impl ColourSpace {
    pub(super) fn components(self) -> u64 {
        match self {
            Self::Grey => 1,
            Self::Rgb | Self::YCbCr => 3,
            Self::Cmyk | Self::Ycck => 4,
        }
    }
}

/// What the frame header says, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub width: u32,
    pub height: u32,
    pub colour_space: ColourSpace,
    /// Luma samples per chroma sample across and down, (1, 1) for grey or an unusual layout.
    pub chroma_subsampling: (u32, u32),
    pub progressive: bool,
    pub lossless: bool,
}

/// The pixel layouts the service asks for: RGB (grey is replicated by libjpeg-turbo, as Pillow's
/// `convert('RGB')` does), and CMYK as stored, for CMYK and YCCK files, which libjpeg-turbo does
/// not turn into RGB (Pillow does that itself, see `jpeg::cmyk_to_rgb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PixelFormat {
    Rgb,
    Cmyk,
}

impl PixelFormat {
    pub(super) fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb => 3,
            Self::Cmyk => 4,
        }
    }

    fn code(self) -> libc::c_int {
        match self {
            Self::Rgb => tj::TJPF_TJPF_RGB,
            Self::Cmyk => tj::TJPF_TJPF_CMYK,
        }
    }
}

/// Pixels as libjpeg-turbo wrote them: `width * height` pixels of `format`, row after row.
#[derive(Debug)]
pub(super) struct Decoded {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The first warning libjpeg-turbo raised while decoding, if any.
    pub warning: Option<String>,
}

/// The largest number of scans accepted in a progressive JPEG. Each scan is a pass over the
/// whole coefficient buffer, so a small file of thousands of tiny scans costs minutes of CPU
/// (libjpeg-turbo's "two issues with the JPEG standard"); real encoders write about 10.
pub(super) const MAX_SCANS: libc::c_int = 500;

/// A TurboJPEG decompression instance.
pub(super) struct Decompressor {
    handle: NonNull<libc::c_void>,
}

impl Decompressor {
    /// An instance whose own buffers (the whole-image coefficient buffer of progressive and
    /// multi-scan files) may take `max_memory_bytes` at most, rounded up to whole MiB, the unit
    /// libjpeg-turbo counts in; beyond that it refuses the file.
    pub(super) fn new(max_memory_bytes: u64) -> Result<Self, Refused> {
        // SAFETY: tj3Init takes no pointer; it returns a new instance or null.
        let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        let Some(handle) = NonNull::new(handle) else {
            return Err(Refused(
                "libjpeg-turbo could not create a decompressor".to_owned(),
            ));
        };
        let mut decompressor = Self { handle };
        // 0 would mean "no limit".
        let mib = max_memory_bytes.div_ceil(1 << 20).clamp(1, i32::MAX as u64);
        decompressor.set(tj::TJPARAM_TJPARAM_MAXMEMORY, mib as libc::c_int)?;
        decompressor.set(tj::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
        Ok(decompressor)
    }

    fn set(&mut self, param: tj::TJPARAM, value: libc::c_int) -> Result<(), Refused> {
        // SAFETY: the handle is live (owned by self); tj3Set takes no pointer.
        let status = unsafe { tj::tj3Set(self.handle.as_ptr(), param as libc::c_int, value) };
        if status == 0 {
            Ok(())
        } else {
            Err(self.error())
        }
    }

    fn get(&mut self, param: tj::TJPARAM) -> libc::c_int {
        // SAFETY: as in `set`.
        unsafe { tj::tj3Get(self.handle.as_ptr(), param as libc::c_int) }
    }

    /// The message of the last failure on this instance.
    fn error(&mut self) -> Refused {
        // SAFETY: tj3GetErrorStr returns a pointer to a NUL-terminated string inside the live
        // instance (or a static one), valid until the next call on it; it is copied at once.
        let message = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle.as_ptr())) };
        Refused(message.to_string_lossy().into_owned())
    }

    /// Reads the headers up to the first scan.
    pub(super) fn header(&mut self, jpeg: &[u8]) -> Result<Header, Refused> {
        // SAFETY: the pointer and length describe `jpeg`, which outlives the call; libjpeg-turbo
        // only reads it.
        let status = unsafe {
            tj::tj3DecompressHeader(
                self.handle.as_ptr(),
                jpeg.as_ptr(),
                jpeg.len() as tj::size_t,
            )
        };
        if status != 0 {
            return Err(self.error());
        }
        let dimension = |value: libc::c_int| {
            u32::try_from(value).map_err(|_| Refused(format!("invalid image size {value}")))
        };
        let width = dimension(self.get(tj::TJPARAM_TJPARAM_JPEGWIDTH))?;
        let height = dimension(self.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT))?;
        let colour_space = match self.get(tj::TJPARAM_TJPARAM_COLORSPACE) as tj::TJCS {
            tj::TJCS_TJCS_RGB => ColourSpace::Rgb,
            tj::TJCS_TJCS_YCbCr => ColourSpace::YCbCr,
            tj::TJCS_TJCS_GRAY => ColourSpace::Grey,
            tj::TJCS_TJCS_CMYK => ColourSpace::Cmyk,
            tj::TJCS_TJCS_YCCK => ColourSpace::Ycck,
            other => return Err(Refused(format!("unknown JPEG colour space {other}"))),
        };
        let chroma_subsampling = match self.get(tj::TJPARAM_TJPARAM_SUBSAMP) {
            tj::TJSAMP_TJSAMP_422 => (2, 1),
            tj::TJSAMP_TJSAMP_420 => (2, 2),
            tj::TJSAMP_TJSAMP_440 => (1, 2),
            tj::TJSAMP_TJSAMP_411 => (4, 1),
            tj::TJSAMP_TJSAMP_441 => (1, 4),
            // 4:4:4, grey, and layouts TurboJPEG has no name for: no reduction assumed.
            _ => (1, 1),
        };
        Ok(Header {
            width,
            height,
            colour_space,
            chroma_subsampling,
            progressive: self.get(tj::TJPARAM_TJPARAM_PROGRESSIVE) == 1,
            lossless: self.get(tj::TJPARAM_TJPARAM_LOSSLESS) == 1,
        })
    }

    /// Decodes `jpeg` into a new buffer of `format` pixels, at 1/`denominator` of its size in
    /// each axis (1, 2, 4 or 8; rounded up, as libjpeg-turbo does; lossless JPEGs are always
    /// decoded at full size, the only size libjpeg-turbo has for them). The caller has checked
    /// the size against its limits.
    ///
    /// Warnings do not fail the decode, as in Pillow: libjpeg-turbo warns about damage it
    /// recovers from (bytes before a marker, a damaged stretch of entropy-coded data) and decodes
    /// the rest, and Pillow, whose libjpeg error handler ignores warnings, returns that image.
    /// Fatal errors fail it, also as in Pillow.
    pub(super) fn decode(
        &mut self,
        jpeg: &[u8],
        denominator: u8,
        format: PixelFormat,
    ) -> Result<Decoded, Refused> {
        let header = self.header(jpeg)?;
        let denominator = if header.lossless { 1 } else { denominator };
        let scaled = |side: u32| side.div_ceil(u32::from(denominator));
        let (width, height) = (scaled(header.width), scaled(header.height));
        let row = width as usize * format.bytes_per_pixel();
        let mut pixels = vec![0u8; row * height as usize];
        let scale = tj::tjscalingfactor {
            num: 1,
            denom: libc::c_int::from(denominator),
        };
        // SAFETY: the handle is live; tj3SetScalingFactor takes the factor by value and refuses
        // (non-zero) a factor it does not support.
        if unsafe { tj::tj3SetScalingFactor(self.handle.as_ptr(), scale) } != 0 {
            return Err(self.error());
        }
        let warning = match self.decompress(jpeg, format, row, &mut pixels)? {
            None => None,
            // TurboJPEG 3.1 answers TJERR_WARNING whenever a warning was raised, even when a
            // fatal error then stopped the decode (tj3GetErrorCode looks at the warning flag
            // only). A decode that ran to the end has written the last row, one that stopped has
            // not: the last row still at the buffer's initial zeros is the one ambiguous case,
            // settled by decoding again into a buffer of 0xff.
            Some(warning) if last_row_differs(&pixels, row, 0) => Some(warning),
            Some(_) => {
                pixels.fill(0xff);
                match self.decompress(jpeg, format, row, &mut pixels)? {
                    Some(warning) if !last_row_differs(&pixels, row, 0xff) => {
                        return Err(Refused(warning))
                    }
                    warning => warning,
                }
            }
        };
        Ok(Decoded {
            pixels,
            width,
            height,
            warning,
        })
    }

    /// One tj3Decompress8 call into `out` (rows of `row` bytes, as many as the scaled height):
    /// `Ok(Some(message))` if it warned, `Err` if it failed.
    fn decompress(
        &mut self,
        jpeg: &[u8],
        format: PixelFormat,
        row: usize,
        out: &mut [u8],
    ) -> Result<Option<String>, Refused> {
        let pitch = libc::c_int::try_from(row)
            .map_err(|_| Refused(format!("rows of {row} bytes are too long")))?;
        // SAFETY: `out` holds `row * scaled height` bytes, computed by `decode` from the header of
        // these same bytes, with the scaling factor just set on this instance (and none for
        // lossless files, which libjpeg-turbo never scales); the pitch is `row`, so every row
        // libjpeg-turbo writes lies inside `out`. `jpeg` is only read.
        let status = unsafe {
            tj::tj3Decompress8(
                self.handle.as_ptr(),
                jpeg.as_ptr(),
                jpeg.len() as tj::size_t,
                out.as_mut_ptr(),
                pitch,
                format.code(),
            )
        };
        if status == 0 {
            return Ok(None);
        }
        // SAFETY: as in `set`.
        let code = unsafe { tj::tj3GetErrorCode(self.handle.as_ptr()) };
        let message = self.error();
        if code == tj::TJERR_TJERR_WARNING as libc::c_int {
            Ok(Some(message.0))
        } else {
            Err(message)
        }
    }
}

/// Whether the last `row` bytes of `pixels` hold anything but `fill` (always true for no rows).
fn last_row_differs(pixels: &[u8], row: usize, fill: u8) -> bool {
    pixels.len() < row || pixels[pixels.len() - row..].iter().any(|&b| b != fill)
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once, here.
        unsafe { tj::tj3Destroy(self.handle.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/jpeg/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn decompressor() -> Decompressor {
        Decompressor::new(64 << 20).unwrap()
    }

    #[test]
    fn the_header_describes_the_frame() {
        let cases = [
            (
                "progressive-420.jpg",
                320,
                240,
                ColourSpace::YCbCr,
                (2, 2),
                true,
            ),
            (
                "baseline-422.jpg",
                320,
                240,
                ColourSpace::YCbCr,
                (2, 1),
                false,
            ),
            (
                "odd-size-progressive-444.jpg",
                333,
                251,
                ColourSpace::YCbCr,
                (1, 1),
                true,
            ),
            ("grey.jpg", 320, 240, ColourSpace::Grey, (1, 1), false),
            ("cmyk.jpg", 320, 240, ColourSpace::Cmyk, (1, 1), false),
            (
                "rgb-colour-space.jpg",
                320,
                240,
                ColourSpace::Rgb,
                (1, 1),
                false,
            ),
        ];
        for (name, width, height, colour_space, chroma_subsampling, progressive) in cases {
            let want = Header {
                width,
                height,
                colour_space,
                chroma_subsampling,
                progressive,
                lossless: false,
            };
            assert_eq!(decompressor().header(&fixture(name)), Ok(want), "{name}");
        }
        let refused = decompressor().header(b"\xff\xd8\xff\xd9").unwrap_err();
        assert!(!refused.0.is_empty());
    }

    /// Junk before EOI: a warning, and the whole image all the same.
    #[test]
    fn a_warning_leaves_the_image_decoded() {
        let decoded = decompressor()
            .decode(
                &fixture("warning-extraneous-bytes.jpg"),
                1,
                PixelFormat::Rgb,
            )
            .unwrap();
        let warning = decoded.warning.unwrap();
        assert!(
            warning.contains("extraneous bytes before marker 0xd9"),
            "{warning}"
        );
        assert_eq!((decoded.width, decoded.height), (320, 240));
        let clean = decompressor()
            .decode(&fixture("progressive-420.jpg"), 2, PixelFormat::Rgb)
            .unwrap();
        assert_eq!(clean.warning, None);
        assert_eq!(
            (clean.width, clean.height, clean.pixels.len()),
            (160, 120, 160 * 120 * 3)
        );
    }

    /// The case `decode` settles: tj3Decompress8 fails with TJERR_WARNING although a fatal
    /// error (an impossible scan header) stopped it, and no row was written.
    #[test]
    fn a_fatal_error_after_a_warning_is_told_apart() {
        let jpeg = fixture("fatal-after-warning.jpg");
        let mut decompressor = decompressor();
        let row = 320 * 3;
        for fill in [0, 0xff] {
            let mut out = vec![fill; row * 240];
            let reported = decompressor.decompress(&jpeg, PixelFormat::Rgb, row, &mut out);
            assert!(matches!(reported, Ok(Some(_))), "{reported:?}");
            assert!(!last_row_differs(&out, row, fill));
        }
        let refused = decompressor.decode(&jpeg, 1, PixelFormat::Rgb).unwrap_err();
        assert!(refused.0.contains("progressive"), "{refused:?}");
    }

    #[test]
    fn the_memory_limit_reaches_libjpeg_turbo() {
        // 1 MiB is too little for the coefficients of a 2000x2000 progressive 4:4:4 file: a
        // header naming that size over the real file's tables is enough to need them.
        let mut jpeg = fixture("odd-size-progressive-444.jpg");
        let sof = jpeg.windows(2).position(|m| m == [0xff, 0xc2]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x07, 0xd0, 0x07, 0xd0]);
        let refused = Decompressor::new(1)
            .unwrap()
            .decode(&jpeg, 1, PixelFormat::Rgb);
        let message = refused.unwrap_err().0;
        assert!(message.contains("Memory limit exceeded"), "{message}");
        let fits = Decompressor::new(64 << 20)
            .unwrap()
            .decode(&jpeg, 1, PixelFormat::Rgb);
        assert!(fits.is_ok(), "{fits:?}");
    }
}
