pub const SIDE: usize = 224;
pub fn scale_into(rgb: &[u8], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(rgb) {
        *o = f32::from(v) / 127.5 - 1.0;
    }
}
