//! The server against a hand-made client speaking the wire format byte by byte (what real
//! clients do is in tests/cli/serve.rs): the handshake's answers, structured and simple
//! replies, block status, bounds and flags, malformed and oversized input, deadlines, and
//! overlays across restarts and crashes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::overlay::{Overlay, BLOCK};
use super::*;
use crate::archive::{Archive, InitParams, Location, MemDest, OpenOptions};
use crate::nbd::handshake::{self as hs, opt, rep, ExportRequest, MetaRequest, Opt};
use crate::nbd::transmission::{
    self as tx, cmd_flag, errno, flag, reply_type, state, Command, ReplyHeader, Request,
};
use crate::ops::faults::{auth, name};

const CS: u64 = 65536;

/// A volume of `chunks` chunks: data in most, zero chunks (holes) in every third, a short
/// last chunk.
fn image(seed: u64, chunks: u64) -> Vec<u8> {
    let mut v = vec![0u8; (chunks * CS) as usize + 1000];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in 0..chunks {
        if c % 3 == 1 {
            continue;
        }
        for b in &mut v[(c * CS) as usize..((c + 1) * CS) as usize] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    let n = v.len();
    v[n - 1] = 7;
    v
}

/// An in-memory archive with sessions of "vol" (one per image) and "other", and the state
/// directory they were sent with.
struct Fixture {
    dest: MemDest,
    meta: tempfile::TempDir,
    dir: tempfile::TempDir,
    images: Vec<Vec<u8>>,
}

fn send(wa: &mut crate::archive::WriteArchive, dir: &Path, vol: &str, s: u32, data: &[u8]) {
    let src = dir.join(format!("{vol}.{s}.src"));
    std::fs::write(&src, data).unwrap();
    crate::ops::send::run(
        wa,
        &[crate::ops::send::SendRequest {
            volume: vol.into(),
            source: src,
            reflink: false,
        }],
        &crate::ops::send::SendOptions {
            session: Some(name(s)),
            send_unchanged: true,
            ..Default::default()
        },
    )
    .unwrap();
}

fn fixture(sessions: u32) -> Fixture {
    let dest = MemDest::new("mem:serve");
    let meta = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut wa = Archive::init(
        Location::memory(dest.clone()),
        &InitParams {
            compression: crate::archive::Compressor::new(crate::archive::Compression::Zstd, 3)
                .unwrap(),
            chunksize: CS,
            cipher: None,
        },
        &auth(),
        Some(meta.path()),
    )
    .unwrap();
    let mut images = Vec::new();
    for s in 1..=sessions {
        let img = image(s as u64, 12);
        send(&mut wa, dir.path(), "vol", s, &img);
        images.push(img);
    }
    send(&mut wa, dir.path(), "other", 1, &image(99, 3));
    Fixture {
        dest,
        meta,
        dir,
        images,
    }
}

impl Fixture {
    fn archive(&self) -> Archive {
        crate::ops::faults::open_read(&self.dest, Some(self.meta.path())).unwrap()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn options(&self) -> ServeOptions {
        let mut o = ServeOptions::new(Listen::Unix(self.socket()));
        o.cache_bytes = 1 << 20;
        o.refresh = Duration::ZERO;
        o
    }

    fn serve(&self, f: impl FnOnce(&mut ServeOptions)) -> Server {
        let mut o = self.options();
        f(&mut o);
        start(self.archive(), o).unwrap()
    }
}

/// A client that speaks the protocol by hand.
struct Client {
    s: UnixStream,
    cookie: u64,
}

/// A reply chunk as read: type, flags, payload.
#[derive(Debug)]
struct Chunk {
    kind: u16,
    flags: u16,
    payload: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        Client::with_flags(path, hs::C_FIXED_NEWSTYLE | hs::C_NO_ZEROES)
    }

    fn with_flags(path: &Path, flags: u32) -> Client {
        let s = UnixStream::connect(path).unwrap();
        // A guard against a hanging test, not a measurement.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { s, cookie: 0 };
        let mut g = [0u8; 18];
        c.s.read_exact(&mut g).unwrap();
        assert_eq!(g, hs::greeting());
        c.s.write_all(&flags.to_be_bytes()).unwrap();
        c
    }

    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut b = h.to_vec();
        b.resize(20 + len, 0);
        self.s.read_exact(&mut b[20..]).unwrap();
        let (o, k, d) = hs::parse_reply(&b).unwrap();
        (o, k, d.to_vec())
    }

    /// Sends an option; the replies up to its final one (an ack or an error).
    fn opt(&mut self, o: &Opt) -> Vec<(u32, Vec<u8>)> {
        self.s.write_all(&o.to_bytes()).unwrap();
        let mut out = Vec::new();
        loop {
            let (code, kind, data) = self.reply();
            assert_eq!(code, o.code());
            let last = kind == rep::ACK || kind & (1 << 31) != 0;
            out.push((kind, data));
            if last {
                return out;
            }
        }
    }

    fn structured(&mut self) {
        assert_eq!(self.opt(&Opt::StructuredReply)[0].0, rep::ACK);
    }

    fn meta(&mut self, export: &str) {
        let r = self.opt(&Opt::SetMetaContext(MetaRequest {
            export: export.into(),
            queries: vec![hs::BASE_ALLOCATION.into()],
        }));
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].0, rep::META_CONTEXT);
    }

    /// GO: the export's size and transmission flags.
    fn go(&mut self, name: &str) -> (u64, u16) {
        let r = self.opt(&Opt::Go(ExportRequest {
            name: name.into(),
            info: vec![hs::info::BLOCK_SIZE],
        }));
        assert_eq!(r.last().unwrap().0, rep::ACK, "{r:?}");
        let export = r
            .iter()
            .find(|(k, d)| *k == rep::INFO && d[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        let d = &export.1;
        (
            u64::from_be_bytes(d[2..10].try_into().unwrap()),
            u16::from_be_bytes(d[10..12].try_into().unwrap()),
        )
    }

    fn request(&mut self, command: Command, flags: u16, offset: u64, length: u32) -> u64 {
        self.cookie += 1;
        let r = Request {
            flags,
            command,
            cookie: self.cookie,
            offset,
            length,
        };
        self.s.write_all(&r.to_bytes()).unwrap();
        self.cookie
    }

    /// The chunks of one structured reply, up to the one marked done.
    fn chunks(&mut self, cookie: u64) -> Vec<Chunk> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            match ReplyHeader::parse(&h).unwrap() {
                ReplyHeader::Chunk {
                    flags,
                    kind,
                    cookie: c,
                    length,
                } => {
                    assert_eq!(c, cookie);
                    let mut payload = vec![0u8; length as usize];
                    self.s.read_exact(&mut payload).unwrap();
                    let done = flags & tx::REPLY_FLAG_DONE != 0;
                    out.push(Chunk {
                        kind,
                        flags,
                        payload,
                    });
                    if done {
                        return out;
                    }
                }
                other => panic!("a simple reply where a structured one was due: {other:?}"),
            }
        }
    }

    /// A structured read, reassembled; or the error it ended with.
    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let c = self.request(Command::Read, 0, offset, len);
        let mut out = vec![0xEEu8; len as usize];
        let mut covered = 0u64;
        for ch in self.chunks(c) {
            match ch.kind {
                reply_type::OFFSET_DATA => {
                    let at = u64::from_be_bytes(ch.payload[..8].try_into().unwrap()) - offset;
                    let d = &ch.payload[8..];
                    out[at as usize..at as usize + d.len()].copy_from_slice(d);
                    covered += d.len() as u64;
                }
                reply_type::OFFSET_HOLE => {
                    let at = u64::from_be_bytes(ch.payload[..8].try_into().unwrap()) - offset;
                    let n = u32::from_be_bytes(ch.payload[8..12].try_into().unwrap());
                    out[at as usize..at as usize + n as usize].fill(0);
                    covered += n as u64;
                }
                reply_type::NONE => {}
                k if k & 0x8000 != 0 => {
                    return Err(u32::from_be_bytes(ch.payload[..4].try_into().unwrap()))
                }
                k => panic!("chunk type {k}"),
            }
        }
        assert_eq!(covered, len as u64, "the chunks cover the read");
        Ok(out)
    }

    /// The error value of a reply with no data (simple, or a structured error or none).
    fn status(&mut self, cookie: u64) -> u32 {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        match ReplyHeader::parse(&h) {
            Ok(ReplyHeader::Simple { error, cookie: c }) => {
                assert_eq!(c, cookie);
                error
            }
            _ => {
                let mut rest = [0u8; 4];
                self.s.read_exact(&mut rest).unwrap();
                let mut full = h.to_vec();
                full.extend_from_slice(&rest);
                let ReplyHeader::Chunk { length, kind, .. } = ReplyHeader::parse(&full).unwrap()
                else {
                    unreachable!()
                };
                let mut p = vec![0u8; length as usize];
                self.s.read_exact(&mut p).unwrap();
                if kind == reply_type::NONE {
                    0
                } else {
                    u32::from_be_bytes(p[..4].try_into().unwrap())
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], flags: u16) -> u32 {
        let c = self.request(Command::Write, flags, offset, data.len() as u32);
        self.s.write_all(data).unwrap();
        self.status(c)
    }

    /// Whether the server hung up (reads end).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn list_info_and_go_answer_as_the_protocol_says() {
    let f = fixture(2);
    let srv = f.serve(|_| {});
    let mut c = Client::connect(&f.socket());
    let names: Vec<String> = c
        .opt(&Opt::List)
        .into_iter()
        .filter(|(k, _)| *k == rep::SERVER)
        .map(|(_, d)| {
            let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
            String::from_utf8(d[4..4 + n].to_vec()).unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "vol",
            "vol@20260101-000001",
            "vol@20260101-000002",
            "other",
            "other@20260101-000001"
        ]
    );
    assert_eq!(srv.exports(), names);
    // Unknown export, unknown option, malformed option: errors, and the connection goes on.
    let r = c.opt(&Opt::Go(ExportRequest {
        name: "nosuch".into(),
        info: vec![],
    }));
    assert_eq!(r[0].0, rep::ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("nosuch"));
    assert_eq!(c.opt(&Opt::Unknown(99))[0].0, rep::ERR_UNSUP);
    c.s.write_all(
        &hs::OptionHeader {
            option: opt::LIST,
            length: 1,
        }
        .to_bytes(),
    )
    .unwrap();
    c.s.write_all(b"x").unwrap();
    assert_eq!(c.reply().1, rep::ERR_INVALID);
    // Metadata contexts before structured replies: refused; after: listed.
    let lm = Opt::ListMetaContext(MetaRequest {
        export: "vol".into(),
        queries: vec!["base:".into()],
    });
    assert_eq!(c.opt(&lm)[0].0, rep::ERR_INVALID);
    c.structured();
    let r = c.opt(&lm);
    assert_eq!(r[0].0, rep::META_CONTEXT);
    assert_eq!(&r[0].1[4..], hs::BASE_ALLOCATION.as_bytes());
    // INFO with the name and description asked for.
    let r = c.opt(&Opt::Info(ExportRequest {
        name: "vol@20260101-000001".into(),
        info: vec![hs::info::NAME, hs::info::DESCRIPTION],
    }));
    assert!(r.iter().any(|(k, d)| *k == rep::INFO && d[..2] == [0, 1]));
    assert_eq!(r.last().unwrap().0, rep::ACK);
    let (size, flags) = c.go("vol");
    assert_eq!(size, f.images[1].len() as u64);
    for want in [
        flag::READ_ONLY,
        flag::CAN_MULTI_CONN,
        flag::SEND_DF,
        flag::HAS_FLAGS,
    ] {
        assert_ne!(flags & want, 0, "{flags:#x}");
    }
    assert_eq!(flags & flag::SEND_WRITE_ZEROES, 0);
    let d = c.read(0, 4096).unwrap();
    assert_eq!(d, f.images[1][..4096]);
    srv.stop(Duration::from_secs(5)).unwrap();
    assert!(!f.socket().exists(), "the socket is removed");
}

#[test]
fn reads_and_block_status_follow_the_session_data_and_holes() {
    let f = fixture(2);
    let srv = f.serve(|_| {});
    let img = &f.images[0];
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.meta("vol@20260101-000001");
    c.go("vol@20260101-000001");
    // Across chunk boundaries, holes and the short end.
    let size = img.len() as u64;
    for (off, len) in [
        (0u64, 1u32),
        (CS - 10, 20),
        (CS / 2, 3 * CS as u32),
        (0, size as u32),
        (size - 1000, 1000),
    ] {
        let got = c.read(off, len).unwrap();
        assert!(
            got == img[off as usize..(off + len as u64) as usize],
            "{off}+{len}"
        );
    }
    // A whole hole chunk is a hole chunk in the reply, not zeros sent.
    let cookie = c.request(Command::Read, 0, CS, CS as u32);
    let ch = c.chunks(cookie);
    assert_eq!(ch[0].kind, reply_type::OFFSET_HOLE, "{ch:?}");
    // DF: one content chunk.
    let cookie = c.request(Command::Read, cmd_flag::DF, 0, 3 * CS as u32);
    let ch = c.chunks(cookie);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].kind, reply_type::OFFSET_DATA);
    assert_ne!(ch[0].flags & tx::REPLY_FLAG_DONE, 0);
    // Block status: data, hole, data... as the chunks are.
    let cookie = c.request(Command::BlockStatus, 0, 0, size as u32);
    let ch = c.chunks(cookie);
    let p = &ch[0].payload;
    assert_eq!(u32::from_be_bytes(p[..4].try_into().unwrap()), 1);
    let extents: Vec<(u32, u32)> = p[4..]
        .chunks_exact(8)
        .map(|e| {
            (
                u32::from_be_bytes(e[..4].try_into().unwrap()),
                u32::from_be_bytes(e[4..].try_into().unwrap()),
            )
        })
        .collect();
    let mut pos = 0u64;
    for (len, flags) in &extents {
        let hole = flags & state::HOLE != 0;
        assert_eq!(flags & state::ZERO != 0, hole);
        let chunk = pos / CS;
        assert_eq!(hole, chunk % 3 == 1 && pos + CS <= size, "extent at {pos}");
        if hole {
            assert!(img[pos as usize..(pos + *len as u64) as usize]
                .iter()
                .all(|&b| b == 0));
        }
        pos += *len as u64;
    }
    assert_eq!(pos, size);
    // REQ_ONE: one extent, within the length asked.
    let cookie = c.request(Command::BlockStatus, cmd_flag::REQ_ONE, 10, 100);
    let ch = c.chunks(cookie);
    assert_eq!(ch[0].payload.len(), 12);
    assert_eq!(
        u32::from_be_bytes(ch[0].payload[4..8].try_into().unwrap()),
        100
    );
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn refused_requests_and_many_in_flight() {
    let f = fixture(1);
    let srv = f.serve(|_| {});
    let img = &f.images[0];
    let size = img.len() as u64;
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol");
    // What the export does not allow: errors, and the connection goes on.
    assert_eq!(c.read(size - 10, 20), Err(errno::EINVAL));
    assert_eq!(c.write(0, b"abc", 0), errno::EPERM);
    let cookie = c.request(Command::Other(42), 0, 0, 0);
    assert_eq!(c.status(cookie), errno::EINVAL);
    let cookie = c.request(Command::Read, cmd_flag::REQ_ONE, 0, 10);
    assert_eq!(c.status(cookie), errno::EINVAL);
    let cookie = c.request(Command::Trim, 0, 0, 10);
    assert_eq!(c.status(cookie), errno::EPERM);
    let cookie = c.request(Command::Flush, 0, 0, 0);
    assert_eq!(c.status(cookie), 0);
    let cookie = c.request(Command::Cache, 0, 0, size as u32);
    assert_eq!(c.status(cookie), 0);
    assert_eq!(c.read(0, 100).unwrap(), img[..100]);
    // Many requests in flight at once, answered in any order.
    let cookies: Vec<u64> = (0..40)
        .map(|i| c.request(Command::Read, 0, i * 1000, 5000))
        .collect();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < cookies.len() {
        let mut h = [0u8; 20];
        c.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Chunk {
            cookie,
            length,
            flags,
            ..
        } = ReplyHeader::parse(&h).unwrap()
        else {
            panic!()
        };
        let mut p = vec![0u8; length as usize];
        c.s.read_exact(&mut p).unwrap();
        if flags & tx::REPLY_FLAG_DONE != 0 {
            seen.insert(cookie);
        }
    }
    c.s.write_all(
        &Request {
            flags: 0,
            command: Command::Disc,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    assert!(c.closed());
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn simple_replies_for_clients_without_structured_replies() {
    let f = fixture(1);
    let srv = f.serve(|_| {});
    let img = &f.images[0];
    // The oldest handshake: NBD_OPT_EXPORT_NAME, with the 124 zero bytes.
    let mut c = Client::with_flags(&f.socket(), hs::C_FIXED_NEWSTYLE);
    c.s.write_all(&Opt::ExportName("vol".into()).to_bytes())
        .unwrap();
    let mut r = [0u8; 134];
    c.s.read_exact(&mut r).unwrap();
    assert_eq!(
        u64::from_be_bytes(r[..8].try_into().unwrap()),
        img.len() as u64
    );
    let cookie = c.request(Command::Read, 0, 100, 70_000);
    assert_eq!(c.status(cookie), 0);
    let mut d = vec![0u8; 70_000];
    c.s.read_exact(&mut d).unwrap();
    assert!(d == img[100..70_100]);
    // An error: no data follows.
    let cookie = c.request(Command::Read, 0, img.len() as u64, 1);
    assert_eq!(c.status(cookie), errno::EINVAL);
    let cookie = c.request(Command::BlockStatus, 0, 0, 10);
    assert_eq!(c.status(cookie), errno::EINVAL);
    let cookie = c.request(Command::Read, cmd_flag::DF, 0, 10);
    assert_eq!(c.status(cookie), errno::EINVAL);
    let cookie = c.request(Command::Read, 0, 0, 3);
    assert_eq!(c.status(cookie), 0);
    let mut d = [0u8; 3];
    c.s.read_exact(&mut d).unwrap();
    assert_eq!(d, img[..3]);
    // An unknown export with EXPORT_NAME can only be answered by hanging up.
    let mut c = Client::connect(&f.socket());
    c.s.write_all(&Opt::ExportName("nosuch".into()).to_bytes())
        .unwrap();
    assert!(c.closed());
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn malformed_and_oversized_input_ends_only_that_connection() {
    let f = fixture(1);
    let srv = f.serve(|_| {});
    let mut good = Client::connect(&f.socket());
    good.structured();
    good.go("vol");
    // Unknown client flags.
    let mut c = Client::with_flags(&f.socket(), 1 << 7);
    assert!(c.closed());
    // An option without the magic.
    let mut c = Client::connect(&f.socket());
    c.s.write_all(&[0u8; 16]).unwrap();
    assert!(c.closed());
    // An option over the limit is skipped and refused, not read into memory whole.
    let mut c = Client::connect(&f.socket());
    c.s.write_all(
        &hs::OptionHeader {
            option: opt::GO,
            length: 200_000,
        }
        .to_bytes(),
    )
    .unwrap();
    c.s.write_all(&vec![0u8; 200_000]).unwrap();
    assert_eq!(c.reply().1, rep::ERR_TOO_BIG);
    assert_eq!(c.opt(&Opt::List).last().unwrap().0, rep::ACK);
    // A GO whose name claims 4 GiB.
    c.s.write_all(
        &hs::OptionHeader {
            option: opt::GO,
            length: 6,
        }
        .to_bytes(),
    )
    .unwrap();
    c.s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0]).unwrap();
    assert_eq!(c.reply().1, rep::ERR_INVALID);
    // In transmission: a request without the magic, a write over the limit.
    c.structured();
    c.go("vol");
    c.s.write_all(&[0u8; 28]).unwrap();
    assert!(c.closed());
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol");
    c.request(Command::Write, 0, 0, 64 << 20);
    assert!(c.closed());
    // The first client never noticed.
    assert_eq!(good.read(0, 10).unwrap(), f.images[0][..10]);
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn slow_and_idle_clients_are_disconnected() {
    let f = fixture(1);
    let srv = f.serve(|o| {
        o.handshake_limit = Duration::from_millis(300);
        o.idle_limit = Some(Duration::from_millis(300));
    });
    // Connects and says nothing.
    let mut c = Client::connect(&f.socket());
    assert!(c.closed());
    // Half an option, then nothing.
    let mut c = Client::connect(&f.socket());
    c.s.write_all(&Opt::List.to_bytes()[..10]).unwrap();
    assert!(c.closed());
    // In transmission, idle.
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol");
    assert!(c.closed());
    srv.stop(Duration::from_secs(5)).unwrap();
}

/// Many clients at once, at random offsets and lengths, on two sessions and with simple and
/// structured replies: every byte right.
#[test]
fn many_clients_at_once_read_the_right_bytes() {
    let f = fixture(2);
    let srv = f.serve(|o| o.cache_bytes = 256 << 10);
    std::thread::scope(|s| {
        for k in 0..16u64 {
            let f = &f;
            s.spawn(move || {
                let si = (k % 2) as usize;
                let img = &f.images[si];
                let mut c = Client::connect(&f.socket());
                let structured = k % 4 != 3;
                if structured {
                    c.structured();
                }
                c.go(&format!("vol@20260101-00000{}", si + 1));
                let mut x = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(k + 1);
                for _ in 0..40 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = x % img.len() as u64;
                    let len = ((x >> 40) % 200_000 + 1).min(img.len() as u64 - off) as u32;
                    let got = if structured {
                        c.read(off, len).unwrap()
                    } else {
                        let cookie = c.request(Command::Read, 0, off, len);
                        assert_eq!(c.status(cookie), 0);
                        let mut d = vec![0u8; len as usize];
                        c.s.read_exact(&mut d).unwrap();
                        d
                    };
                    assert!(
                        got == img[off as usize..][..len as usize],
                        "client {k} at {off}+{len}"
                    );
                }
            });
        }
    });
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn too_many_clients_are_turned_away() {
    let f = fixture(1);
    let srv = f.serve(|o| o.max_clients = 1);
    let mut first = Client::connect(&f.socket());
    first.structured();
    first.go("vol");
    let s = UnixStream::connect(f.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!((&s).read(&mut b).unwrap(), 0, "no greeting for the second");
    assert_eq!(first.read(0, 10).unwrap(), f.images[0][..10]);
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_damaged_chunk_fails_the_reads_that_need_it_only() {
    let f = fixture(1);
    // Damage one stored chunk of "vol" (its second data chunk, at 2 * CS).
    let vid = f.archive().volume("vol").unwrap().vid.clone();
    let (path, mut data) = f
        .dest
        .files()
        .into_iter()
        .find(|(p, _)| p.starts_with(vid.as_str()) && p.ends_with("/x0000000000020000"))
        .map(|(p, d)| (p, d.to_vec()))
        .unwrap();
    let n = data.len() / 2;
    data[n] ^= 1;
    f.dest.poke(&path, data);
    let srv = f.serve(|_| {});
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol");
    assert_eq!(c.read(2 * CS + 5, 100), Err(errno::EIO));
    assert_eq!(c.read(0, CS as u32).unwrap(), f.images[0][..CS as usize]);
    assert_eq!(c.read(2 * CS - 10, 20), Err(errno::EIO));
    assert_eq!(
        c.read(3 * CS, 10).unwrap(),
        f.images[0][3 * CS as usize..][..10]
    );
    srv.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn overlay_writes_read_back_survive_a_restart_and_leave_the_archive_alone() {
    let f = fixture(1);
    let ov = f.dir.path().join("overlay");
    let img = f.images[0].clone();
    let size = img.len() as u64;
    let mut want = img.clone();
    let mut put = |off: usize, d: &[u8]| want[off..off + d.len()].copy_from_slice(d);
    let srv = f.serve(|o| o.overlay = Some(ov.clone()));
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.meta("vol@20260101-000001");
    let (_, flags) = c.go("vol@20260101-000001");
    assert_eq!(flags & flag::READ_ONLY, 0);
    for want in [
        flag::SEND_FLUSH,
        flag::SEND_FUA,
        flag::SEND_WRITE_ZEROES,
        flag::SEND_TRIM,
    ] {
        assert_ne!(flags & want, 0);
    }
    // A partial block (copied up from the session), a whole block, one across blocks and
    // into the short last block.
    assert_eq!(c.write(100, b"hello", 0), 0);
    put(100, b"hello");
    let whole = vec![0x5a; BLOCK as usize];
    assert_eq!(c.write(4 * BLOCK, &whole, cmd_flag::FUA), 0);
    put(4 * BLOCK as usize, &whole);
    let tail = vec![0xa5; 3000];
    assert_eq!(c.write(size - 2000, &tail[..2000], 0), 0);
    put(size as usize - 2000, &tail[..2000]);
    // Zeroes: a whole block becomes a hole; trim of a whole block too.
    let cookie = c.request(Command::WriteZeroes, 0, 6 * BLOCK, BLOCK as u32);
    assert_eq!(c.status(cookie), 0);
    put(6 * BLOCK as usize, &vec![0; BLOCK as usize]);
    let cookie = c.request(Command::Trim, 0, 8 * BLOCK - 7, BLOCK as u32 + 7);
    assert_eq!(c.status(cookie), 0);
    put(8 * BLOCK as usize, &vec![0; BLOCK as usize]);
    // Beyond the end: no space.
    assert_eq!(c.write(size - 1, b"xy", 0), errno::ENOSPC);
    assert!(c.read(0, size as u32).unwrap() == want);
    let cookie = c.request(Command::BlockStatus, 0, 6 * BLOCK, BLOCK as u32);
    let st = c.chunks(cookie);
    assert_eq!(
        u32::from_be_bytes(st[0].payload[8..12].try_into().unwrap()),
        state::HOLE | state::ZERO
    );
    // A second connection sees the same disk.
    let mut d = Client::connect(&f.socket());
    d.structured();
    d.go("vol");
    assert!(d.read(0, size as u32).unwrap() == want);
    drop((c, d));
    srv.stop(Duration::from_secs(5)).unwrap();

    // Restarted: the writes are there (the stop flushed them).
    let srv = f.serve(|o| o.overlay = Some(ov.clone()));
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol@20260101-000001");
    assert!(c.read(0, size as u32).unwrap() == want);
    srv.stop(Duration::from_secs(5)).unwrap();
    // The archive was never written: served without the overlay, the session is as sent.
    let srv = f.serve(|_| {});
    let mut c = Client::connect(&f.socket());
    c.structured();
    c.go("vol");
    assert!(c.read(0, size as u32).unwrap() == img);
    srv.stop(Duration::from_secs(5)).unwrap();
}

/// The overlay of session 1 of the fixture, opened directly.
fn overlay_of(f: &Fixture, dir: &Path) -> Result<Overlay> {
    let live = LiveArchive::new(f.archive(), 1 << 20, Duration::ZERO);
    let image = live.image(0, 0)?;
    let uuid = live.current().uuid().to_string();
    Overlay::open(dir, &uuid, &image)
}

fn read_all(o: &Overlay, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    o.read(0, &mut b).unwrap();
    b
}

#[test]
fn an_overlay_keeps_what_was_flushed_through_a_crash() {
    let f = fixture(1);
    let dir = f.dir.path().join("ov");
    let img = f.images[0].clone();
    let n = img.len();
    let mut flushed = img.clone();
    {
        let o = overlay_of(&f, &dir).unwrap();
        o.write(10, &[1; 70_000]).unwrap();
        flushed[10..70_010].fill(1);
        o.zero(3 * BLOCK, BLOCK, false).unwrap();
        flushed[3 * BLOCK as usize..4 * BLOCK as usize].fill(0);
        o.flush().unwrap();
        // Written again, never flushed: a crash may lose it, never tears the flushed copy.
        o.write(0, &[2; 200_000]).unwrap();
        o.zero(BLOCK * 5, BLOCK, false).unwrap();
        // A second opener is refused while this one has it.
        let e = overlay_of(&f, &dir).err().unwrap().to_string();
        assert!(e.contains("in use"), "{e}");
    } // dropped without a flush: the process died
    let o = overlay_of(&f, &dir).unwrap();
    assert!(read_all(&o, n) == flushed, "the flushed state, exactly");
    drop(o);

    // A flush cut short: garbage after the last batch is dropped with a warning.
    let map = std::fs::read_dir(
        dir.join(
            std::fs::read_dir(&dir)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        ),
    )
    .unwrap()
    .map(|e| e.unwrap().path())
    .find(|p| p.extension().is_some_and(|x| x == "map"))
    .unwrap();
    let good = std::fs::read(&map).unwrap();
    let mut cut = good.clone();
    cut.extend_from_slice(&[0x57, 0x59, 0x4f, 0x42, 0, 0, 0, 9, 1, 2, 3]);
    std::fs::write(&map, &cut).unwrap();
    let o = overlay_of(&f, &dir).unwrap();
    assert!(read_all(&o, n) == flushed);
    drop(o);
    assert_eq!(std::fs::read(&map).unwrap(), good, "the cut batch is gone");

    // Damage inside the map (not at its end): refused, saying so.
    let mut bad = good.clone();
    bad[super::overlay::HEADER + 20] ^= 1;
    bad.extend_from_slice(&vec![0u8; 3 << 20]);
    std::fs::write(&map, &bad).unwrap();
    let e = overlay_of(&f, &dir).err().unwrap().to_string();
    assert!(e.contains("damaged"), "{e}");
    std::fs::write(&map, &good).unwrap();

    // Damage in a data file: an error for that block, the rest reads.
    let data0 = map.with_extension("0");
    let data1 = map.with_extension("1");
    for d in [&data0, &data1] {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(d)
            .unwrap();
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 1];
        if f.read_at(&mut b, 500).is_ok() {
            f.write_at(&[b[0] ^ 0xff], 500).unwrap();
        }
    }
    let o = overlay_of(&f, &dir).unwrap();
    let mut b = vec![0u8; 100];
    let e = o.read(450, &mut b).unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    let mut b = vec![0u8; 1000];
    o.read(6 * BLOCK, &mut b).unwrap();
    assert!(b == flushed[6 * BLOCK as usize..][..1000]);
}

#[test]
fn an_overlay_is_refused_for_another_session() {
    let f = fixture(2);
    let dir = f.dir.path().join("ov");
    drop(overlay_of(&f, &dir).unwrap());
    // Session 1's files put where session 2's belong.
    let vdir = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for ext in ["map", "0", "1"] {
        std::fs::copy(
            vdir.join(format!("S_20260101-000001.{ext}")),
            vdir.join(format!("S_20260101-000002.{ext}")),
        )
        .unwrap();
    }
    let live = LiveArchive::new(f.archive(), 1 << 20, Duration::ZERO);
    let image = live.image(0, 1).unwrap();
    let e = Overlay::open(&dir, live.current().uuid(), &image)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another archive or session"), "{e}");
}

/// A prune while serving: the list follows it, a surviving session whose chunk files moved
/// reads exactly, and a connection to the pruned session gets errors, not someone else's bytes.
#[test]
fn a_prune_while_serving() {
    let f = fixture(3);
    let srv = f.serve(|_| {});
    let mut c1 = Client::connect(&f.socket());
    c1.structured();
    c1.go("vol@20260101-000001");
    let mut c2 = Client::connect(&f.socket());
    c2.structured();
    c2.go("vol@20260101-000002");
    {
        let mut wa = Archive::open_write(
            Location::memory(f.dest.clone()),
            &OpenOptions {
                auth: &auth(),
                meta_dir: Some(f.meta.path()),
                allow_rollback: true,
                force_retry: false,
                lock: Default::default(),
                tuning: Default::default(),
                progress: Default::default(),
            },
        )
        .unwrap();
        crate::ops::prune::run(
            &mut wa,
            &["vol".to_string()],
            &crate::ops::prune::PruneOptions {
                session: Some("20260101-000001".into()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    // A new client's handshake looks at the archive again.
    let mut c3 = Client::connect(&f.socket());
    let r = c3.opt(&Opt::Go(ExportRequest {
        name: "vol@20260101-000001".into(),
        info: vec![],
    }));
    assert_eq!(r[0].0, rep::ERR_UNKNOWN);
    let size = f.images[1].len() as u32;
    assert!(c2.read(0, size).unwrap() == f.images[1]);
    assert_eq!(c1.read(0, 4096), Err(errno::EIO));
    srv.stop(Duration::from_secs(5)).unwrap();
}

/// A guest discarding its whole disk (mkfs, fstrim) costs one zero run, not an entry per
/// block; what it discarded reads as zeros, durably, and data written after stands.
#[test]
fn discarding_a_whole_overlay_is_one_run() {
    let f = fixture(1);
    let dir = f.dir.path().join("ov");
    let n = f.images[0].len();
    {
        let o = overlay_of(&f, &dir).unwrap();
        o.write(0, &vec![3u8; 5 * BLOCK as usize]).unwrap();
        o.flush().unwrap();
        assert_eq!(o.footprint(), (5, 0));
        o.trim(0, n as u64).unwrap();
        o.write(BLOCK + 10, b"after").unwrap();
        o.flush().unwrap();
        assert_eq!(o.footprint(), (1, 1));
    }
    let o = overlay_of(&f, &dir).unwrap();
    let mut want = vec![0u8; n];
    want[BLOCK as usize + 10..][..5].copy_from_slice(b"after");
    assert!(read_all(&o, n) == want);
    assert_eq!(o.footprint(), (1, 1));
}
