//! What a JPEG's marker segments before its first scan say that TurboJPEG does not: the EXIF
//! block (for `--exif-orientation apply`) and whether the first scan leaves components to later
//! ones (for the memory the decode takes).
//!
//! A plain walk over the segments from SOI to the first SOS, each skipped by its length. It
//! stops quietly at anything it does not understand: libjpeg-turbo, which decodes the file, is
//! the judge of whether it is broken, and what this walk misses only means no orientation.

/// What the walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Markers<'a> {
    /// The TIFF structure of the first APP1 "Exif" segment (Pillow also reads the first).
    pub exif: Option<&'a [u8]>,
    /// The first scan carries fewer components than the frame (a non-interleaved sequential
    /// file): libjpeg-turbo then keeps every coefficient of the image until the last scan, as
    /// it does for a progressive one.
    pub multi_scan: bool,
}

const EXIF_HEADER: &[u8] = b"Exif\0\0";

pub(super) fn read(jpeg: &[u8]) -> Markers<'_> {
    let mut found = Markers::default();
    let mut frame_components = None;
    let mut at = 2; // after SOI
    loop {
        // A marker may be preceded by any number of 0xff fill bytes.
        while jpeg.get(at..at + 2) == Some(&[0xff, 0xff]) {
            at += 1;
        }
        let Some(&[0xff, marker]) = jpeg.get(at..at + 2) else {
            return found;
        };
        at += 2;
        // TEM and RSTn stand alone; SOI or EOI here end what this walk can read.
        match marker {
            0x01 | 0xd0..=0xd7 => continue,
            0xd8 | 0xd9 => return found,
            _ => {}
        }
        let Some(&[high, low]) = jpeg.get(at..at + 2) else {
            return found;
        };
        // The length counts its own two bytes.
        let length = usize::from(u16::from_be_bytes([high, low]));
        let Some(segment) = jpeg.get(at + 2..at + length).filter(|_| length >= 2) else {
            return found;
        };
        match marker {
            0xe1 if found.exif.is_none() => {
                found.exif = segment.strip_prefix(EXIF_HEADER);
            }
            // Every SOFn; 0xc4 (DHT), 0xc8 (JPG) and 0xcc (DAC) share the range.
            0xc0..=0xcf if !matches!(marker, 0xc4 | 0xc8 | 0xcc) => {
                frame_components = segment.get(5).copied();
            }
            0xda => {
                found.multi_scan = matches!(
                    (segment.first(), frame_components),
                    (Some(&in_scan), Some(in_frame)) if in_scan < in_frame
                );
                return found;
            }
            _ => {}
        }
        at += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marker segment: 0xff, the marker, the big-endian length (which counts itself), `data`.
    fn segment(marker: u8, data: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xff, marker];
        bytes.extend_from_slice(&(data.len() as u16 + 2).to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    /// SOI, then `segments`, then scan data and EOI.
    fn jpeg(segments: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = vec![0xff, 0xd8];
        segments.iter().for_each(|s| bytes.extend_from_slice(s));
        bytes.extend_from_slice(&[0x12, 0x34, 0xff, 0xd9]);
        bytes
    }

    /// SOF0 of a 3-component 16x8 frame, and an SOS with `components` components.
    fn sof(components: u8) -> Vec<u8> {
        let mut data = vec![8, 0, 8, 0, 16, components];
        (1..=components).for_each(|id| data.extend_from_slice(&[id, 0x11, 0]));
        segment(0xc0, &data)
    }

    fn sos(components: u8) -> Vec<u8> {
        let mut data = vec![components];
        (1..=components).for_each(|id| data.extend_from_slice(&[id, 0]));
        data.extend_from_slice(&[0, 63, 0]);
        segment(0xda, &data)
    }

    #[test]
    fn the_first_exif_segment_is_found_among_others() {
        let file = jpeg(&[
            segment(0xe0, b"JFIF\0\x01\x02"),
            segment(0xe1, b"http://ns.adobe.com/xap/1.0/\0<x/>"),
            segment(0xe1, b"Exif\0\0MM\0*first"),
            segment(0xe1, b"Exif\0\0II*\0second"),
            sof(3),
            sos(3),
        ]);
        let found = read(&file);
        assert_eq!(found.exif, Some(b"MM\0*first".as_slice()));
        assert!(!found.multi_scan);
    }

    #[test]
    fn fill_bytes_and_standalone_markers_are_skipped() {
        let mut file = vec![0xff, 0xd8, 0xff, 0xff, 0xff, 0x01];
        file.extend(segment(0xe1, b"Exif\0\0tiff"));
        let found = read(&file);
        assert_eq!(found.exif, Some(b"tiff".as_slice()));
    }

    #[test]
    fn a_first_scan_with_fewer_components_than_the_frame_is_multi_scan() {
        assert!(read(&jpeg(&[sof(3), sos(1), sos(1), sos(1)])).multi_scan);
        assert!(!read(&jpeg(&[sof(1), sos(1)])).multi_scan);
        // No frame header before the scan: unknown, so not claimed.
        assert!(!read(&jpeg(&[sos(1)])).multi_scan);
    }

    /// A length running past the end, a length below 2, garbage instead of a marker, an empty
    /// file: the walk ends with what it found so far, without panicking.
    #[test]
    fn damaged_structure_ends_the_walk() {
        let exif = segment(0xe1, b"Exif\0\0tiff");
        let mut past_the_end = jpeg(std::slice::from_ref(&exif));
        past_the_end.extend_from_slice(&[0xff, 0xe2, 0x40, 0x00, 1, 2]);
        let cases: [(Vec<u8>, Option<&[u8]>); 5] = [
            (past_the_end, Some(b"tiff")),
            (
                [vec![0xff, 0xd8, 0xff, 0xe1, 0, 1], exif.clone()].concat(),
                None,
            ),
            ([vec![0xff, 0xd8, 0x00], exif.clone()].concat(), None),
            (vec![], None),
            (vec![0xff, 0xd8, 0xff], None),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            assert_eq!(read(bytes).exif, *want, "case {i}");
        }
    }
}
