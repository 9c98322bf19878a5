//! What an NBD client sends: the handshake's flags and options, then transmission requests.

use super::Target;

pub(super) const TARGET: Target = Target {
    name: "nbd",
    run,
    seed_files: &[],
    builtin_seeds: &[
        // Client flags; LIST; GO "vol" asking for the block size; SET_META_CONTEXT
        // base:allocation; a read request.
        b"\0\0\0\x03IHAVEOPT\0\0\0\x03\0\0\0\0IHAVEOPT\0\0\0\x07\0\0\0\x0b\0\0\0\x03vol\0\x01\0\x03IHAVEOPT\0\0\0\x0a\0\0\0\x1e\0\0\0\x03vol\0\0\0\x01\0\0\0\x0fbase:allocation\x25\x60\x95\x13\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\x10\0\0\0\x10\0",
        b"\0\0\0\x01IHAVEOPT\0\0\0\x01\0\0\0\x07vm1.img",
    ],
};

/// What an NBD client sends: its flags, options (each re-encoded and parsed again), then
/// request headers.
fn run(data: &[u8]) {
    use crate::nbd::handshake::{ClientFlags, Opt, OptionHeader};
    use crate::nbd::transmission::{ReplyHeader, Request};
    let mut rest = data;
    if let Some((f, r)) = rest.split_first_chunk::<4>() {
        if let Ok(c) = ClientFlags::parse(*f) {
            assert_eq!(c.to_bytes(), *f, "client flags round trip");
        }
        rest = r;
    }
    while let Some((h, r)) = rest.split_first_chunk::<{ OptionHeader::LEN }>() {
        let Ok(h) = OptionHeader::parse(h) else {
            break;
        };
        let (d, r) = r.split_at((h.length as usize).min(r.len()));
        if let Ok(o) = Opt::parse(h.option, d) {
            let b = o.to_bytes();
            let h2 = OptionHeader::parse(b[..OptionHeader::LEN].try_into().expect("a header"))
                .expect("an option re-parses");
            assert_eq!(
                Opt::parse(h2.option, &b[OptionHeader::LEN..]).as_ref(),
                Ok(&o),
                "option round trip"
            );
        }
        rest = r;
    }
    for r in rest.chunks_exact(Request::LEN) {
        if let Ok(q) = Request::parse(r.try_into().expect("a request")) {
            assert_eq!(Request::parse(&q.to_bytes()), Ok(q), "request round trip");
        }
        let _ = ReplyHeader::parse(r);
    }
}
