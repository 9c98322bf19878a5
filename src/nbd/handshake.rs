//! The fixed newstyle handshake: the server's greeting, the client's flags, options and the
//! server's option replies (`proto.md`, "Handshake" and "Values: Handshake phase").

use super::{bounded, Cursor, Malformed};

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flags (server).
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flags.
pub(crate) const C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(crate) const C_NO_ZEROES: u32 = 1 << 1;

/// Option codes.
pub mod opt {
    pub(crate) const EXPORT_NAME: u32 = 1;
    pub(crate) const ABORT: u32 = 2;
    pub(crate) const LIST: u32 = 3;
    pub(crate) const STARTTLS: u32 = 5;
    pub(crate) const INFO: u32 = 6;
    pub(crate) const GO: u32 = 7;
    pub(crate) const STRUCTURED_REPLY: u32 = 8;
    pub(crate) const LIST_META_CONTEXT: u32 = 9;
    pub(crate) const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    pub(crate) const ACK: u32 = 1;
    pub(crate) const SERVER: u32 = 2;
    pub(crate) const INFO: u32 = 3;
    pub(crate) const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub(crate) const ERR_UNSUP: u32 = ERR + 1;
    pub(crate) const ERR_POLICY: u32 = ERR + 2;
    pub(crate) const ERR_INVALID: u32 = ERR + 3;
    pub(crate) const ERR_TLS_REQD: u32 = ERR + 5;
    pub(crate) const ERR_UNKNOWN: u32 = ERR + 6;
    pub(crate) const ERR_SHUTDOWN: u32 = ERR + 7;
    pub(crate) const ERR_TOO_BIG: u32 = ERR + 9;
}

/// Information types of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub(crate) const BLOCK_SIZE: u16 = 3;
}

/// The one metadata context this protocol defines: which extents hold data.
pub(crate) const BASE_ALLOCATION: &str = "base:allocation";

/// Whether a metadata context query selects `base:allocation`: the name itself, or (when
/// listing only) the namespace wildcard `base:`.
pub(crate) fn selects_base_allocation(query: &str, listing: bool) -> bool {
    query == BASE_ALLOCATION || (listing && query == "base:")
}

/// What the server sends on connecting: magic, `IHAVEOPT`, handshake flags.
pub(crate) fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The client's answer to the greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

impl ClientFlags {
    /// Unknown flags end the connection (the protocol says so: they cannot be answered).
    pub fn parse(b: [u8; 4]) -> Result<ClientFlags, Malformed> {
        let v = u32::from_be_bytes(b);
        if v & !(C_FIXED_NEWSTYLE | C_NO_ZEROES) != 0 {
            return Err(Malformed("unknown client flags"));
        }
        Ok(ClientFlags {
            fixed_newstyle: v & C_FIXED_NEWSTYLE != 0,
            no_zeroes: v & C_NO_ZEROES != 0,
        })
    }

    #[cfg(any(test, feature = "fuzz-targets"))]
    pub(crate) fn to_bytes(self) -> [u8; 4] {
        let mut v = 0;
        if self.fixed_newstyle {
            v |= C_FIXED_NEWSTYLE;
        }
        if self.no_zeroes {
            v |= C_NO_ZEROES;
        }
        v.to_be_bytes()
    }
}

/// The fixed part of an option: its code and the length of the data that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub(crate) const LEN: usize = 16;

    pub fn parse(b: &[u8; Self::LEN]) -> Result<OptionHeader, Malformed> {
        let mut c = Cursor::new(b);
        if c.u64() != Some(IHAVEOPT) {
            return Err(Malformed("an option without the IHAVEOPT magic"));
        }
        Ok(OptionHeader {
            option: c.u32().expect("in bounds"),
            length: c.u32().expect("in bounds"),
        })
    }

    #[cfg(any(test, feature = "fuzz-targets"))]
    pub(crate) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// `NBD_OPT_INFO` / `NBD_OPT_GO`: an export and the information wanted about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExportRequest {
    pub name: String,
    pub info: Vec<u16>,
}

/// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MetaRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// An option as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Opt {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(ExportRequest),
    Go(ExportRequest),
    StructuredReply,
    ListMetaContext(MetaRequest),
    SetMetaContext(MetaRequest),
    /// An option this module does not know (the server answers `NBD_REP_ERR_UNSUP`).
    Unknown(u32),
}

/// An option that is known but syntactically wrong: the server answers `NBD_REP_ERR_INVALID`
/// (`NBD_OPT_EXPORT_NAME`, which cannot be answered with an error, ends the connection).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct OptError(pub &'static str);

fn no_data(data: &[u8], what: Opt) -> Result<Opt, OptError> {
    if data.is_empty() {
        Ok(what)
    } else {
        Err(OptError("this option takes no data"))
    }
}

fn export_request(data: &[u8]) -> Result<ExportRequest, OptError> {
    let mut c = Cursor::new(data);
    let len = c.u32().ok_or(OptError("too short for an export name"))? as usize;
    if len > data.len().saturating_sub(6) {
        return Err(OptError("the export name runs past the option"));
    }
    let name = c.string(len).map_err(OptError)?;
    let n = c
        .u16()
        .ok_or(OptError("no count of information requests"))? as usize;
    if c.remaining() != 2 * n {
        return Err(OptError("the information requests do not fill the option"));
    }
    let mut info = Vec::new();
    for _ in 0..n {
        let i = c.u16().expect("counted");
        if !info.contains(&i) {
            info.push(i);
        }
    }
    Ok(ExportRequest { name, info })
}

fn meta_request(data: &[u8]) -> Result<MetaRequest, OptError> {
    let mut c = Cursor::new(data);
    let len = c.u32().ok_or(OptError("too short for an export name"))? as usize;
    let export = c.string(len).map_err(OptError)?;
    let n = c.u32().ok_or(OptError("no count of queries"))?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = c.u32().ok_or(OptError("fewer queries than counted"))? as usize;
        queries.push(c.string(len).map_err(OptError)?);
    }
    if c.remaining() != 0 {
        return Err(OptError("bytes after the last query"));
    }
    Ok(MetaRequest { export, queries })
}

impl Opt {
    /// Parses the data of option `option` (its header already read).
    pub fn parse(option: u32, data: &[u8]) -> Result<Opt, OptError> {
        match option {
            opt::EXPORT_NAME => super::checked_string(data)
                .map(Opt::ExportName)
                .map_err(OptError),
            // Data after an abort is ignored, as the protocol asks.
            opt::ABORT => Ok(Opt::Abort),
            opt::LIST => no_data(data, Opt::List),
            opt::STARTTLS => no_data(data, Opt::StartTls),
            opt::INFO => export_request(data).map(Opt::Info),
            opt::GO => export_request(data).map(Opt::Go),
            opt::STRUCTURED_REPLY => no_data(data, Opt::StructuredReply),
            opt::LIST_META_CONTEXT => meta_request(data).map(Opt::ListMetaContext),
            opt::SET_META_CONTEXT => meta_request(data).map(Opt::SetMetaContext),
            other => Ok(Opt::Unknown(other)),
        }
    }

    #[cfg(any(test, feature = "fuzz-targets"))]
    pub fn code(&self) -> u32 {
        match self {
            Opt::ExportName(_) => opt::EXPORT_NAME,
            Opt::Abort => opt::ABORT,
            Opt::List => opt::LIST,
            Opt::StartTls => opt::STARTTLS,
            Opt::Info(_) => opt::INFO,
            Opt::Go(_) => opt::GO,
            Opt::StructuredReply => opt::STRUCTURED_REPLY,
            Opt::ListMetaContext(_) => opt::LIST_META_CONTEXT,
            Opt::SetMetaContext(_) => opt::SET_META_CONTEXT,
            Opt::Unknown(c) => *c,
        }
    }

    /// The option as a client sends it: header and data.
    #[cfg(any(test, feature = "fuzz-targets"))]
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut d = Vec::new();
        match self {
            Opt::ExportName(n) => d.extend_from_slice(n.as_bytes()),
            Opt::Info(r) | Opt::Go(r) => {
                d.extend_from_slice(&(r.name.len() as u32).to_be_bytes());
                d.extend_from_slice(r.name.as_bytes());
                d.extend_from_slice(&(r.info.len() as u16).to_be_bytes());
                for i in &r.info {
                    d.extend_from_slice(&i.to_be_bytes());
                }
            }
            Opt::ListMetaContext(m) | Opt::SetMetaContext(m) => {
                d.extend_from_slice(&(m.export.len() as u32).to_be_bytes());
                d.extend_from_slice(m.export.as_bytes());
                d.extend_from_slice(&(m.queries.len() as u32).to_be_bytes());
                for q in &m.queries {
                    d.extend_from_slice(&(q.len() as u32).to_be_bytes());
                    d.extend_from_slice(q.as_bytes());
                }
            }
            Opt::Abort | Opt::List | Opt::StartTls | Opt::StructuredReply | Opt::Unknown(_) => {}
        }
        let mut b = OptionHeader {
            option: self.code(),
            length: d.len() as u32,
        }
        .to_bytes()
        .to_vec();
        b.extend_from_slice(&d);
        b
    }
}

/// One option reply: magic, the option answered, the reply type, its data.
pub fn reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// An error reply with a message for the user (cut to the protocol's string limit).
pub(crate) fn reply_error(option: u32, kind: u32, message: &str) -> Vec<u8> {
    debug_assert!(kind & (1 << 31) != 0, "an error reply type");
    reply(option, kind, bounded(message).as_bytes())
}

/// `NBD_REP_SERVER`: one export of a list, with a description for people.
pub(crate) fn reply_server(name: &str, description: &str) -> Vec<u8> {
    let name = bounded(name);
    let description = bounded(description);
    let mut d = Vec::with_capacity(4 + name.len() + description.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    reply(opt::LIST, rep::SERVER, &d)
}

/// `NBD_REP_META_CONTEXT`: a context and the id block status replies will carry.
pub(crate) fn reply_meta_context(option: u32, id: u32, name: &str) -> Vec<u8> {
    let mut d = id.to_be_bytes().to_vec();
    d.extend_from_slice(bounded(name).as_bytes());
    reply(option, rep::META_CONTEXT, &d)
}

/// An `NBD_REP_INFO` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    Name(String),
    Description(String),
    BlockSize {
        minimum: u32,
        preferred: u32,
        maximum: u32,
    },
}

impl Info {
    pub fn reply(&self, option: u32) -> Vec<u8> {
        let mut d = Vec::new();
        match self {
            Info::Export { size, flags } => {
                d.extend_from_slice(&info::EXPORT.to_be_bytes());
                d.extend_from_slice(&size.to_be_bytes());
                d.extend_from_slice(&flags.to_be_bytes());
            }
            Info::Name(n) => {
                d.extend_from_slice(&info::NAME.to_be_bytes());
                d.extend_from_slice(bounded(n).as_bytes());
            }
            Info::Description(s) => {
                d.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
                d.extend_from_slice(bounded(s).as_bytes());
            }
            Info::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                d.extend_from_slice(&minimum.to_be_bytes());
                d.extend_from_slice(&preferred.to_be_bytes());
                d.extend_from_slice(&maximum.to_be_bytes());
            }
        }
        reply(option, rep::INFO, &d)
    }
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless
/// the client asked for none.
pub(crate) fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = size.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    b
}

#[cfg(test)]
/// A reply as a client reads it: (option, type, data). For tests and the fuzz round trip.
pub(crate) fn parse_reply(b: &[u8]) -> Result<(u32, u32, &[u8]), Malformed> {
    let mut c = Cursor::new(b);
    if c.u64() != Some(OPT_REPLY_MAGIC) {
        return Err(Malformed("an option reply without its magic"));
    }
    let option = c.u32().ok_or(Malformed("short option reply"))?;
    let kind = c.u32().ok_or(Malformed("short option reply"))?;
    let len = c.u32().ok_or(Malformed("short option reply"))? as usize;
    let data = c.take(len).ok_or(Malformed("short option reply data"))?;
    Ok((option, kind, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(o: Opt) {
        let b = o.to_bytes();
        let h = OptionHeader::parse(b[..16].try_into().unwrap()).unwrap();
        assert_eq!(h.length as usize, b.len() - 16);
        assert_eq!(Opt::parse(h.option, &b[16..]).unwrap(), o);
    }

    #[test]
    fn options_round_trip() {
        round_trip(Opt::ExportName("vm1.img".into()));
        round_trip(Opt::Abort);
        round_trip(Opt::List);
        round_trip(Opt::StartTls);
        round_trip(Opt::StructuredReply);
        round_trip(Opt::Go(ExportRequest {
            name: "vms/disk1.img@20261101-020000".into(),
            info: vec![info::BLOCK_SIZE, info::NAME],
        }));
        round_trip(Opt::Info(ExportRequest {
            name: String::new(),
            info: vec![],
        }));
        round_trip(Opt::SetMetaContext(MetaRequest {
            export: "vm1.img".into(),
            queries: vec![BASE_ALLOCATION.into(), "qemu:dirty-bitmap:x".into()],
        }));
        round_trip(Opt::ListMetaContext(MetaRequest {
            export: "".into(),
            queries: vec![],
        }));
        round_trip(Opt::Unknown(11));
    }

    #[test]
    fn what_the_protocol_forbids_is_refused() {
        assert!(ClientFlags::parse([0, 0, 0, 4]).is_err());
        assert_eq!(
            ClientFlags::parse([0, 0, 0, 3]).unwrap(),
            ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            }
        );
        let mut h = OptionHeader {
            option: 7,
            length: 0,
        }
        .to_bytes();
        h[0] ^= 1;
        assert!(OptionHeader::parse(&h).is_err());
        assert!(Opt::parse(opt::LIST, b"x").is_err());
        assert!(Opt::parse(opt::STARTTLS, b"x").is_err());
        assert_eq!(Opt::parse(opt::ABORT, b"ignored").unwrap(), Opt::Abort);
        // GO: a name longer than the option, a count that does not fill it, a name that claims
        // 4 GiB (never allocated).
        assert!(Opt::parse(opt::GO, &[0, 0, 0, 9, b'a', 0, 0]).is_err());
        assert!(Opt::parse(opt::GO, &[0, 0, 0, 1, b'a', 0, 2, 0, 3]).is_err());
        assert!(Opt::parse(opt::GO, &[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        // Meta: more queries counted than present, trailing bytes.
        assert!(Opt::parse(opt::SET_META_CONTEXT, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Opt::parse(opt::SET_META_CONTEXT, &[0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(Opt::parse(opt::EXPORT_NAME, b"a\0").is_err());
    }

    #[test]
    fn replies_have_the_documented_layout() {
        let r = reply_server("vm1.img", "newest session");
        let (o, k, d) = parse_reply(&r).unwrap();
        assert_eq!((o, k), (opt::LIST, rep::SERVER));
        assert_eq!(&d[..4], &7u32.to_be_bytes());
        assert_eq!(&d[4..11], b"vm1.img");
        assert_eq!(&d[11..], b"newest session");
        let r = Info::Export {
            size: 1 << 30,
            flags: 3,
        }
        .reply(opt::GO);
        let (_, k, d) = parse_reply(&r).unwrap();
        assert_eq!(k, rep::INFO);
        assert_eq!(d.len(), 12);
        let e = reply_error(opt::GO, rep::ERR_UNKNOWN, &"x".repeat(10_000));
        assert_eq!(parse_reply(&e).unwrap().2.len(), crate::nbd::MAX_STRING);
        assert_eq!(export_name_reply(1, 1, false).len(), 134);
        assert_eq!(export_name_reply(1, 1, true).len(), 10);
        assert_eq!(&greeting()[..8], b"NBDMAGIC");
        assert!(selects_base_allocation("base:", true));
        assert!(!selects_base_allocation("base:", false));
        assert!(!selects_base_allocation("base:other", true));
    }
}
